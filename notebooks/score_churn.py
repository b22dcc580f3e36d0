# Databricks notebook source
# PLACEHOLDER, replaced by the batch-scoring work (issue 12): the stack's `churn-score` job runs this
# notebook, so the file must exist for the stack to synthesize. It declares the widgets the job passes
# (env, slot, version, scoringDate, input) and stops with a clear error instead of pretending to score.
dbutils.widgets.text("env", "", "Environment")
dbutils.widgets.dropdown("slot", "prod", ["stage", "prod"], "Score with the model of slot")
dbutils.widgets.text("version", "", "or model version")
dbutils.widgets.text("scoringDate", "", "Scoring date (YYYY-MM-DD)")
dbutils.widgets.text("input", "", "Customer table (default: the data container's)")

# COMMAND ----------
raise NotImplementedError(
    "notebooks/score_churn.py is a placeholder: batch scoring is not in this build yet (issue 12)"
)
