# Databricks notebook source
# Score the whole customer base with one model version and write the scores of one date to the
# `scores` table of the churndata container, with an MLflow run in experiment `churn-scoring`.
# The `churn-score` job passes env, slot, version, scoringDate and input; an empty version scores
# with the version the slot serves, an empty scoringDate is today (UTC), an empty input the churn table.
dbutils.widgets.text("env", "", "Environment")
dbutils.widgets.dropdown("slot", "prod", ["prod", "stage"], "Slot (when no version)")
dbutils.widgets.text("version", "", "Model version")
dbutils.widgets.text("scoringDate", "", "Scoring date (YYYY-MM-DD)")
dbutils.widgets.text("input", "", "Customer table URI")
env_name = dbutils.widgets.get("env")
slot = dbutils.widgets.get("slot")
version = dbutils.widgets.get("version")
scoring_date = dbutils.widgets.get("scoringDate")
input_uri = dbutils.widgets.get("input")

# COMMAND ----------
# The project root (the parent of this notebook's folder) holds the `config` and `deploy` packages.
# A Databricks job runs a workspace notebook with its own folder as the working directory.
import os
import sys

notebook_dir = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
sys.path.insert(0, os.path.dirname(notebook_dir))

# COMMAND ----------
# On Databricks `spark` is the cluster's session; run locally, the runtime starts a local one.
from deploy import notebook_runtime

result = notebook_runtime.score(dbutils, env_name, slot, version, scoring_date, input_uri, globals().get("spark"))

# COMMAND ----------
dbutils.notebook.exit(result)
