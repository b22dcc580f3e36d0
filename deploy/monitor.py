"""`python -m deploy monitor`: judge what a slot's model sees against what it was trained on.

`--env local` runs the monitor in process (deploy/monitoring/run.py) over the slot's request log and
the batch scores of the window. Azure environments start the workspace's `churn-monitor` job (the
`monitor_churn` notebook runs the same code, next to the Delta score table) and wait for its verdict.

Exit statuses: 0 no threshold crossed (a signal with too few rows says "not enough data" and crosses
nothing); 3 a threshold crossed (DRIFTED); 2 bad input (a bad --window, an unknown slot); 1 a
failure (nothing serves the slot, its training split is missing, the job failed).
"""

from __future__ import annotations

import argparse
from typing import Any

from config import EnvConfig
from config.naming import SLOTS
from deploy.core.errors import OK, UsageError
from deploy.core.report import emit_json

DRIFTED = 3  # a threshold was crossed: documented in the CLI help and the README
MONITOR_NOTEBOOK = "monitor_churn"
WAIT_MARGIN_MINUTES = 15


def run(args: argparse.Namespace, env: EnvConfig) -> int:
    from deploy.monitoring.window import parse_window

    parse_window(args.window)  # a bad window is refused before anything is read or started
    if args.slot not in SLOTS:
        raise UsageError(f"unknown slot '{args.slot}'; expected one of {', '.join(SLOTS)}")
    if env.is_local:
        document = monitor_locally(args, env)
    else:
        if args.retrain:
            raise UsageError("--retrain is for the local environment; the churn-monitor job starts churn-train "
                             "itself when a threshold is crossed")
        document = monitor_on_databricks(args, env)
    if args.json:
        emit_json(document)
    else:
        from deploy.monitoring.report import summary

        print(summary(document))
    return DRIFTED if document["verdict"] == "crossed" else OK


def monitor_locally(args: argparse.Namespace, env: EnvConfig) -> dict[str, Any]:
    from datetime import datetime

    from deploy.monitoring import retrain
    from deploy.monitoring.run import run_monitor

    result = run_monitor(env, args.slot, args.window)
    if result.retrain_wanted:
        at = datetime.fromisoformat(result.at)
        result.retrain = retrain.train_locally(env, at) if args.retrain else retrain.planned(env, at)
    return result.as_dict()


def monitor_on_databricks(args: argparse.Namespace, env: EnvConfig) -> dict[str, Any]:
    """Start the churn-monitor job for the slot and window, wait, and return the notebook's verdict."""
    from deploy.platform import jobs
    from deploy.platform.outputs import load_outputs

    outputs = load_outputs(env, args.outputs)
    client = jobs.workspace_client(env, outputs)
    minutes = env.monitoring.job_timeout_minutes + WAIT_MARGIN_MINUTES
    parameters = {"slot": args.slot, "window": args.window}
    job_run = jobs.run_job(client, outputs.monitor_job_id, parameters, what=f"monitoring of slot {args.slot}",
                           timeout_minutes=minutes)
    if not job_run.notebook_result:
        raise RuntimeError(
            f"job run {job_run.run_id} of churn-monitor returned no verdict; see {job_run.run_page_url}"
        )
    return {**job_run.notebook_result, "job_run": job_run.as_dict()}


def exit_status(document: dict[str, Any]) -> int:
    return DRIFTED if document.get("verdict") == "crossed" else OK

