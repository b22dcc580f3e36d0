# Databricks notebook source
# Train the churn model for one CI build and log the run to the environment's MLflow experiment
# `automl-churn`, tagged with the build. The `train` job passes env, buildNumber and buildSource;
# run by hand with empty widgets, the build becomes a generated id and the source "manual".
dbutils.widgets.text("env", "", "Environment")
dbutils.widgets.text("buildNumber", "", "buildNumber")
dbutils.widgets.text("buildSource", "", "buildSource")
dbutils.widgets.dropdown("force", "false", ["false", "true"], "Retrain a build that has a run")
env_name = dbutils.widgets.get("env")
build_number = dbutils.widgets.get("buildNumber")
build_source = dbutils.widgets.get("buildSource")
force = dbutils.widgets.get("force") == "true"

# COMMAND ----------
# The project root (the parent of this notebook's folder) holds the `config` and `deploy` packages.
# A Databricks job runs a workspace notebook with its own folder as the working directory.
import os
import sys

notebook_dir = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
sys.path.insert(0, os.path.dirname(notebook_dir))

# COMMAND ----------
from deploy import notebook_runtime

result = notebook_runtime.train(dbutils, env_name, build_number, build_source, force)

# COMMAND ----------
dbutils.notebook.exit(result)
