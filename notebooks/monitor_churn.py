# Databricks notebook source
# PLACEHOLDER, replaced by the monitoring work (issue 13): the stack's `churn-monitor` job runs this
# notebook, so the file must exist for the stack to synthesize. It declares the widgets the job passes
# (env, slot, window) and stops with a clear error instead of pretending to monitor.
dbutils.widgets.text("env", "", "Environment")
dbutils.widgets.dropdown("slot", "prod", ["stage", "prod"], "Slot")
dbutils.widgets.text("window", "7d", "Window")

# COMMAND ----------
raise NotImplementedError(
    "notebooks/monitor_churn.py is a placeholder: monitoring is not in this build yet (issue 13)"
)
