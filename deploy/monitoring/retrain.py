"""Acting on a crossed threshold: a new training build, never a promotion.

On Databricks the monitor notebook starts the `churn-train` job with a build number derived from the
day (`monitor-20261201`) and source `monitor@2026-12-01`, and does not wait for it. The new build then
goes through the normal gated release like any other: nothing here releases, and prod stays behind
the pipeline's approval. The build id makes the trigger idempotent: a second crossing the same day
finds that day's run of churn-train (running or succeeded) and starts nothing.

Locally, `monitor` says what it would start; with `--retrain` it trains that build in process.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from config import EnvConfig
from deploy.core.report import progress

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from deploy.platform.outputs import StackOutputs

BUILD_PREFIX = "monitor-"
SOURCE_PREFIX = "monitor@"


def retrain_build(moment: datetime) -> tuple[str, str]:
    """The build id and source of the retraining a crossing on `moment`'s day starts."""
    return f"{BUILD_PREFIX}{moment:%Y%m%d}", f"{SOURCE_PREFIX}{moment:%Y-%m-%d}"


def start_on_databricks(
    env: EnvConfig, outputs: StackOutputs, at: datetime, credential: TokenCredential | None = None,
    client: Any = None,
) -> dict[str, Any]:
    """Start (or find) the day's retraining run of churn-train; returns what was started."""
    from deploy.platform import jobs

    build, source = retrain_build(at)
    client = client or jobs.workspace_client(env, outputs, credential)
    started = jobs.run_training(client, outputs.train_job_id, build, source, wait=False)
    verb = "found" if started.reused else "started"
    return {"build": build, "source": source, "started": True, "job_run": started.as_dict(),
            "message": f"retraining: {verb} churn-train run {started.run_id} for build {build} "
                       f"({started.run_page_url}); it promotes nothing: release it through the gated pipeline"}


def train_locally(env: EnvConfig, at: datetime) -> dict[str, Any]:
    """`monitor --retrain` in the local environment: train the day's build in process."""
    from deploy.training import train_build

    build, source = retrain_build(at)
    progress(f"retraining: training build {build} (source {source}) locally")
    trained = train_build(env, build, source)
    return {"build": build, "source": source, "started": True, "run_id": trained.run_id, "reused": trained.reused,
            "message": f"retraining: build {build} trained as run {trained.run_id}; release it with "
                       f"python -m deploy release --env {env.name} --to stage --build {build}"}


def planned(env: EnvConfig, at: datetime) -> dict[str, Any]:
    build, source = retrain_build(at)
    return {"build": build, "source": source, "started": False,
            "message": f"retraining: would start churn-train for build {build} (source {source}); "
                       f"--retrain trains it locally (python -m deploy monitor --env {env.name} --retrain)"}
