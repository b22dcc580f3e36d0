# Databricks notebook source
# Watch one serving slot: feature and prediction drift against the served version's training split,
# data quality, the slot's health and realized quality, over a window (7d, 36h). The `churn-monitor`
# job passes env, slot and window on its schedule; when drift or decay crosses a threshold it starts
# the churn-train job (a new build, promoted by nobody but the gated release).
dbutils.widgets.text("env", "", "Environment")
dbutils.widgets.dropdown("slot", "prod", ["stage", "prod"], "Slot")
dbutils.widgets.text("window", "7d", "Window")
env_name = dbutils.widgets.get("env")
slot = dbutils.widgets.get("slot")
window = dbutils.widgets.get("window")

# COMMAND ----------
# The project root (the parent of this notebook's folder) holds the `config` and `deploy` packages.
# A Databricks job runs a workspace notebook with its own folder as the working directory.
import os
import sys

notebook_dir = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
sys.path.insert(0, os.path.dirname(notebook_dir))

# COMMAND ----------
from deploy import notebook_runtime

result = notebook_runtime.monitor(dbutils, env_name, slot, window)

# COMMAND ----------
dbutils.notebook.exit(result)
