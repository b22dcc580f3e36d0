"""Lineage of batch scoring: every run is an MLflow run in experiment `churn-scoring`.

A run is tagged with what it scored with and for (model version, build, the model's training run,
scoring date, and the slot when the version came from one) and logs what it read and wrote: the
input and output locations, the row count, empty values per column, the unscored rows, the
decisions, the risk deciles' cut points and a histogram of the probabilities (counted on Spark;
only the 20 bin counts reach the driver). `latest_run` is what `status` shows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from config import EnvConfig
from deploy.core.contract import SCORING_EXPERIMENT
from deploy.platform import tracking

if TYPE_CHECKING:
    from mlflow.entities import Run

HISTOGRAM_ARTIFACT = "score_histogram.png"
SUMMARY_ARTIFACT = "score_summary.json"
HISTOGRAM_BINS = 20
TAG_MODEL_VERSION = "model_version"
TAG_BUILD = "build"
TAG_MODEL_RUN = "model_run_id"
TAG_SCORING_DATE = "scoring_date"
TAG_SLOT = "slot"
TAG_OUTPUT = "output"
TAG_INPUT = "input"


@contextmanager
def scoring_run(env: EnvConfig, tags: dict[str, str], run_name: str) -> Iterator[Run]:
    """An MLflow run in `churn-scoring` for one scoring run; FAILED if the block raises."""
    import mlflow

    experiment_id = tracking.ensure_experiment(env, SCORING_EXPERIMENT)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        yield run


def log_results(params: dict[str, Any], metrics: dict[str, float], summary: dict[str, Any], figure: Any) -> None:
    import mlflow

    mlflow.log_params(params)
    mlflow.log_metrics(metrics)
    mlflow.log_text(json.dumps(summary, indent=2, sort_keys=True, default=str), SUMMARY_ARTIFACT)
    mlflow.log_figure(figure, HISTOGRAM_ARTIFACT)


def histogram_figure(counts: list[int], threshold: float | None, title: str) -> Any:
    """A bar chart of `counts` (HISTOGRAM_BINS equal bins over [0, 1]), with the decision threshold."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    width = 1.0 / len(counts)
    figure, axes = pyplot.subplots(figsize=(6, 4))
    axes.bar([index * width for index in range(len(counts))], counts, width=width, align="edge",
             edgecolor="white", label="customers")
    if threshold is not None:
        axes.axvline(threshold, color="firebrick", linestyle="--", label=f"threshold {threshold:.3f}")
    axes.set(xlabel="churn probability", ylabel="customers", title=title, xlim=(0, 1))
    axes.legend(loc="upper right")
    figure.tight_layout()
    return figure


def close_figure(figure: Any) -> None:
    from matplotlib import pyplot

    pyplot.close(figure)


def latest_run(env: EnvConfig) -> dict[str, Any] | None:
    """The newest scoring run of the environment (MLflow pointed at it already), or None."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(SCORING_EXPERIMENT)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    run = runs[0]
    tags, metrics = run.data.tags, run.data.metrics
    return {
        "run_id": run.info.run_id,
        "status": run.info.status,
        "scoring_date": tags.get(TAG_SCORING_DATE),
        "model_version": tags.get(TAG_MODEL_VERSION),
        "build": tags.get(TAG_BUILD),
        "slot": tags.get(TAG_SLOT),
        "rows": int(metrics["rows"]) if "rows" in metrics else None,
        "rows_unscored": int(metrics["rows_unscored"]) if "rows_unscored" in metrics else None,
        "output": tags.get(TAG_OUTPUT),
        "started": datetime.fromtimestamp(run.info.start_time / 1000, UTC).isoformat(timespec="seconds"),
    }
