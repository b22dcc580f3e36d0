"""`python -m deploy score`: score the whole customer base with one model version for one date.

Azure environments start the workspace's `churn-score` job (the `score_churn` notebook) through
databricks-sdk with Entra ID auth, and wait for it. `--env local` executes that same notebook
in-process with the dbutils stand-in, on a local-mode Spark session. Either way the version is
`--version`, else the one the slot (`--slot`, default prod) serves, and a re-run for a date
replaces that date's scores.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from config import EnvConfig
from deploy.core.contract import ID_COLUMN, PROBABILITY, SCORING_EXPERIMENT
from deploy.core.errors import OK, UsageError
from deploy.core.report import emit_json, progress
from deploy.scoring.request import ScoringRequest, scoring_request

SCORE_NOTEBOOK = "score_churn"
SHOWN = ("Geography", "Gender", "Age", "NumOfProducts", "IsActiveMember", "Balance")


def run(args: argparse.Namespace, env: EnvConfig) -> int:
    request = scoring_request(args.date, args.version, args.slot, args.input)
    document = score_locally(args, env, request) if env.is_local else score_on_databricks(args, env, request)
    if args.json:
        emit_json(document)
    else:
        print(summary(document))
    return OK


def notebook_parameters(env: EnvConfig, request: ScoringRequest) -> dict[str, str]:
    """The `score_churn` notebook's widgets (the `churn-score` job's parameters)."""
    return {
        "env": env.name, "slot": request.slot, "version": request.version or "",
        "scoringDate": request.scoring_date, "input": request.input or "",
    }


def score_locally(args: argparse.Namespace, env: EnvConfig, request: ScoringRequest) -> dict[str, Any]:
    """Run the scoring notebook in-process with the dbutils stand-in; returns the run as a document."""
    from deploy import notebook_runtime

    dbutils = notebook_runtime.local_dbutils(notebook_parameters(env, request), config_path=args.config)
    exit_value = notebook_runtime.run_notebook(SCORE_NOTEBOOK, dbutils)
    if exit_value is None:
        raise RuntimeError(f"notebook {SCORE_NOTEBOOK} returned no result; expected its run as JSON")
    return json.loads(exit_value)


def score_on_databricks(args: argparse.Namespace, env: EnvConfig, request: ScoringRequest) -> dict[str, Any]:
    """Start a run of the workspace's `churn-score` job for the request and wait for it."""
    from deploy.platform import jobs
    from deploy.platform.outputs import load_outputs

    outputs = load_outputs(env, args.outputs)
    job_id = getattr(outputs, "score_job_id", "")  # an output of stacks that define the churn-score job
    if not job_id:
        raise UsageError(
            f"the outputs of {env.stack_name} name no score_job_id; deploy the stack that defines the "
            f"churn-score job (make infra-deploy ENV={env.name})"
        )
    if request.input and request.input.startswith("/") and not request.input.startswith("/dbfs/"):
        progress(f"note: --input {request.input} is read by the job's cluster, not from this machine")
    job_run = jobs.run_job(
        jobs.workspace_client(env, outputs), job_id, notebook_parameters(env, request),
        what=f"scoring date {request.scoring_date}", timeout_minutes=wait_budget_minutes(env),
        poll_seconds=jobs.POLL_SECONDS,
    )
    scored = job_run.notebook_result or {}
    return {
        **scored, "environment": env.name, "scoring_date": scored.get("scoring_date", request.scoring_date),
        "experiment": SCORING_EXPERIMENT, "job_run": job_run.as_dict(),
    }


def wait_budget_minutes(env: EnvConfig) -> float:
    """The scoring job's own timeout (the `scoring` config, where the stack has one; else training's) plus
    the margin a queued run waits."""
    from deploy.platform.jobs import WAIT_MARGIN_MINUTES

    scoring = getattr(env, "scoring", None)
    timeout = getattr(scoring, "job_timeout_minutes", None) or env.training.job_timeout_minutes
    return timeout + WAIT_MARGIN_MINUTES


def summary(document: dict[str, Any]) -> str:
    """The human result: what was scored with what, where the scores are, and the ten riskiest customers."""
    via = f", served by {document['slot']}" if document.get("slot") else ""
    lines = [
        f"scored {document.get('rows')} customers for {document['scoring_date']} with model version "
        f"{document.get('model_version')} (build {document.get('build')}{via}): {document.get('rows_scored')} "
        f"scored, {document.get('rows_unscored')} left unscored (an empty feature), "
        f"{document.get('churners')} predicted to churn",
        f"  scores: {document.get('output')}",
        f"  run {document.get('run_id')} in experiment {document['experiment']}",
    ]
    job_run = document.get("job_run")
    if job_run:
        lines.append(f"  job run {job_run['run_id']} {job_run['state']}: {job_run['run_page_url']}")
    riskiest = document.get("riskiest") or []
    if riskiest:
        lines.append(f"the {len(riskiest)} riskiest customers:")
        header = [ID_COLUMN, PROBABILITY, "risk_decile", *SHOWN]
        rows = [[str(customer.get(name, "")) if name != PROBABILITY else f"{customer[name]:.3f}" for name in header]
                for customer in riskiest]
        widths = [max(len(name), *(len(row[index]) for row in rows)) for index, name in enumerate(header)]
        lines.append("  " + "  ".join(name.ljust(width) for name, width in zip(header, widths, strict=True)).rstrip())
        lines.extend("  " + "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)
    return "\n".join(lines)
