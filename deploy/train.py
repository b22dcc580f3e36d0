"""`python -m deploy train`: train one CI build and leave a finished MLflow run tagged with it.

Azure environments start the workspace's `train` job (the `train_churn` notebook) through
databricks-sdk with Entra ID auth, and wait for it. `--env local` executes that same notebook
in-process, with a stand-in for `dbutils`, against the local MLflow store and data folder.
Either way a build that already has a finished (or, on Azure, a running) run is reported rather
than trained twice, unless `--force`.
"""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any

from config import EnvConfig
from deploy.core.build_id import check_build
from deploy.core.contract import EXPERIMENT, MANUAL_SOURCE
from deploy.core.errors import OK, UsageError
from deploy.core.report import emit_json, progress

TRAIN_NOTEBOOK = "train_churn"


def run(args: argparse.Namespace, env: EnvConfig) -> int:
    # Left out: the hackathon's manual fallback. Given but empty: an error (check_build).
    build = str(uuid.uuid4()) if args.build is None else args.build
    source = MANUAL_SOURCE if args.source is None else args.source
    check_build(build, source)
    if env.is_local:
        document = train_locally(args, env, build, source)
    else:
        if args.data:
            raise UsageError(f"--data is for the local environment only; '{env.name}' trains on its data container")
        document = train_on_databricks(args, env, build, source)
    if args.json:
        emit_json(document)
    else:
        print(summary(document))
    return OK


def train_locally(args: argparse.Namespace, env: EnvConfig, build: str, source: str) -> dict[str, Any]:
    """Run the training notebook in-process with the dbutils stand-in; returns the run as a document."""
    from deploy import notebook_runtime

    if args.no_wait:
        progress("--no-wait has no effect locally: training runs in this process")
    progress(f"training build {build} (source {source}) in environment {env.name}")
    parameters = {"env": env.name, "buildNumber": build, "buildSource": source, "force": str(args.force).lower()}
    dbutils = notebook_runtime.local_dbutils(parameters, config_path=args.config, data_csv=args.data)
    exit_value = notebook_runtime.run_notebook(TRAIN_NOTEBOOK, dbutils)
    if exit_value is None:
        raise RuntimeError(f"notebook {TRAIN_NOTEBOOK} returned no result; expected its run as JSON")
    return {"environment": env.name, **json.loads(exit_value)}


def train_on_databricks(args: argparse.Namespace, env: EnvConfig, build: str, source: str) -> dict[str, Any]:
    """Start (or find) the build's run of the workspace's `train` job and, unless --no-wait, wait for it."""
    from deploy.platform import jobs
    from deploy.platform.outputs import load_outputs

    outputs = load_outputs(env, args.outputs)
    client = jobs.workspace_client(env, outputs)
    job_run = jobs.run_training(
        client, outputs.train_job_id, build, source,
        force=args.force, wait=not args.no_wait, timeout_minutes=jobs.wait_budget_minutes(env),
        poll_seconds=jobs.POLL_SECONDS,
    )
    trained = job_run.notebook_result or {}  # the notebook's TrainResult, once the run has finished
    return {
        **trained,
        "environment": env.name,
        "build": build,
        "source": trained.get("source", source),
        "experiment": EXPERIMENT,
        "run_id": trained.get("run_id"),
        "metrics": trained.get("metrics", {}),
        # Reused at either level: an existing job run of the build, or the build's existing MLflow run.
        "reused": job_run.reused or bool(trained.get("reused")),
        "job_run": job_run.as_dict(),
    }


def summary(document: dict[str, Any]) -> str:
    """The human result line(s) on stdout: the run, and its held-out metrics when they are known."""
    run = document.get("run_id") or "(not finished yet)"
    lines = [f"build {document['build']}: run {run} in experiment {document['experiment']}"]
    if document.get("reused"):
        lines[0] += " (existing run; --force retrains)"
    job_run = document.get("job_run")
    if job_run:
        lines.append(f"job run {job_run['run_id']} {job_run['state']}: {job_run['run_page_url']}")
    metrics = document.get("metrics") or {}
    shown = [name for name in ("auc", "accuracy", "precision", "recall", "f1") if name in metrics]
    if shown:
        lines.append("  ".join(f"{name} {metrics[name]:.3f}" for name in shown))
    return "\n".join(lines)
