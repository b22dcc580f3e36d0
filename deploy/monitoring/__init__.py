"""Watching what a slot's model sees: drift, data quality, the slot's health and realized quality.

`monitor.run_monitor` is the one entry point (`python -m deploy monitor --env local` and the Databricks
`monitor_churn` notebook both call it). The modules below it read top-down:

    window       the --window flag (Nd / Nh) and its UTC time range
    reference    the training split of the version the slot serves, and that model's probabilities on it
    request_log  the local slot's JSON Lines request log, read in chunks across its rotated files
    sources      the batch scores (scores/scoring_date=...) and the outcomes table in the data container
    drift        streaming profiles against the reference's bins: drift, prediction drift, data quality
    health       volume, error rate and latency (the request log locally, Azure Monitor metrics on Azure)
    realized     AUC of past scores against the outcomes that have arrived, per scoring date
    report       the one-screen summary, the HTML report and the PNG charts
    traffic      sends a (drifted) synthetic customer base through a slot, for the demo

Heavy imports (mlflow, scipy, matplotlib, the Azure SDKs) happen inside the functions that need them.
"""
