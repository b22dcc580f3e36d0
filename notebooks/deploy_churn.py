# Databricks notebook source
# Release one build's model into a slot (Stage or Prod): the hackathon guide's release notebook,
# now a call into the rollout (quality gate, blue/green deployment, validation, traffic switch).
# The `deploy` job passes env, buildNumber and deployType; an empty buildNumber releases the latest build.
dbutils.widgets.text("env", "", "Environment")
dbutils.widgets.text("buildNumber", "", "buildNumber")
dbutils.widgets.dropdown("deployType", "Stage", ["Stage", "Prod"], "Deploy:")
env_name = dbutils.widgets.get("env")
build_number = dbutils.widgets.get("buildNumber")
deploy_type = dbutils.widgets.get("deployType")

# COMMAND ----------
# The project root (the parent of this notebook's folder) holds the `config` and `deploy` packages.
# A Databricks job runs a workspace notebook with its own folder as the working directory.
import os
import sys

notebook_dir = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
sys.path.insert(0, os.path.dirname(notebook_dir))

# COMMAND ----------
from deploy import notebook_runtime

result = notebook_runtime.deploy(dbutils, env_name, build_number, deploy_type)

# COMMAND ----------
dbutils.notebook.exit(result)
