"""Train one build and log it: the code path shared by `train --env local` and the Databricks notebook.

One call reads and checks the churn table, splits it, writes the build's audit trail
(`runs/<build>/train.csv` and `test.csv`), searches the model, and logs one MLflow run in the
experiment `automl-churn` tagged with the build, with metrics, the model and a ROC curve.
A build that already has a finished run is reported, not retrained, unless `force` is given.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config import EnvConfig
from deploy.core import contract
from deploy.core.build_id import check_build
from deploy.core.errors import UsageError
from deploy.core.report import progress
from deploy.platform import storage, tracking
from deploy.platform.outputs import StackOutputs
from deploy.training import model, packaging, schema, synthetic

if TYPE_CHECKING:
    import pandas as pd
    from azure.core.credentials import TokenCredential

ROC_CURVE_ARTIFACT = "roc_curve.png"
TAG_SUPERSEDED_BY = "superseded_by"  # on a run replaced by a forced retrain of its build
THRESHOLD_RULE = "f1-optimal-out-of-fold"


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    build: str
    source: str
    experiment: str
    metrics: dict[str, float]
    train_data: str = ""
    test_data: str = ""
    reused: bool = False  # True when the build already had a finished run and nothing was trained
    params: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_build(
    env: EnvConfig,
    build: str,
    source: str,
    data_csv: Path | None = None,
    outputs: StackOutputs | None = None,
    *,
    force: bool = False,
    credential: TokenCredential | None = None,
) -> TrainResult:
    """Train `build` in `env` and log its run; return the run (or the build's existing finished run).

    `data_csv` replaces the environment's churn table (local only). On Azure, `credential` reads
    and writes the data container (default: the environment's azure-identity chain).
    """
    check_build(build, source)
    if data_csv is not None and not env.is_local:
        raise UsageError(f"--data is for the local environment only; '{env.name}' reads its data container")
    tracking.use_environment(env, outputs)
    experiment_id = tracking.ensure_experiment(env)
    root = tracking.data_root(env, outputs)
    if not env.is_local and credential is None:
        from deploy.platform.azure_auth import credential as env_credential

        credential = env_credential(env)
    # One training of a build at a time: two would both finish, and the build could never be released
    # by name. A second one waits for the first, then reports its run.
    build_lock = tracking.environment_locks(env, outputs, credential)
    wait = env.training.job_timeout_minutes * 60
    with build_lock.hold(f"train-{build}", f"training of build {build}", wait_seconds=wait):
        existing = find_finished_run(experiment_id, build)
        if existing is not None and not force:
            progress(f"build {build} already has finished run {existing.run_id}; reporting it (--force retrains)")
            return existing

        frame, source_location = _read_source(env, root, data_csv, credential)
        seed = model.RANDOM_SEED
        parts = model.split(frame, seed)
        train_location = storage.join(root, contract.audit_path(build, "train"))
        test_location = storage.join(root, contract.audit_path(build, "test"))
        storage.write_text(train_location, parts.train.to_csv(index=False), credential)
        storage.write_text(test_location, parts.test.to_csv(index=False), credential)
        progress(f"wrote the audit trail: {train_location} ({len(parts.train)} rows), {test_location} "
                 f"({len(parts.test)})")
        result = _train_and_log(
            experiment_id, build, source, parts, seed, source_location, train_location, test_location
        )
        if existing is not None:
            _supersede(experiment_id, build, result.run_id)
    return result


def find_finished_run(experiment_id: str, build: str) -> TrainResult | None:
    """The newest finished run tagged with `build`, if any."""
    runs = _finished_runs(experiment_id, build)
    if not runs:
        return None
    run = runs[0]
    return TrainResult(
        run_id=run.info.run_id,
        build=build,
        source=run.data.tags.get(contract.TAG_SOURCE, ""),
        experiment=contract.EXPERIMENT,
        metrics={name: run.data.metrics[name] for name in sorted(run.data.metrics)},
        train_data=run.data.params.get("train_data", ""),
        test_data=run.data.params.get("test_data", ""),
        reused=True,
        params=dict(run.data.params),
    )


def _finished_runs(experiment_id: str, build: str) -> list[Any]:
    """The build's finished runs, newest first (a tag filter on the server, the status checked in Python)."""
    return tracking.finished_runs(experiment_id, build)


def _supersede(experiment_id: str, build: str, new_run_id: str) -> None:
    """Keep one finished run per build (what the rollout looks a build up by): a forced retrain's older
    runs are tagged with their successor and deleted. MLflow deletes softly: `mlflow runs restore`
    brings one back, and model versions registered from it keep working."""
    import mlflow

    client = mlflow.MlflowClient()
    for run in _finished_runs(experiment_id, build):
        if run.info.run_id == new_run_id:
            continue
        try:
            client.set_tag(run.info.run_id, TAG_SUPERSEDED_BY, new_run_id)
            client.delete_run(run.info.run_id)
        except mlflow.exceptions.MlflowException as exc:
            # The new run stands; the rollout will name both runs of the build until one is deleted.
            progress(f"warning: could not delete superseded run {run.info.run_id} of build {build}: {exc}")
            continue
        progress(f"run {run.info.run_id} of build {build} is superseded by {new_run_id} and deleted (restorable)")


def _read_source(
    env: EnvConfig, root: str, data_csv: Path | None, credential: TokenCredential | None
) -> tuple[pd.DataFrame, str]:
    location = str(data_csv) if data_csv is not None else storage.join(root, contract.SOURCE_DATA_PATH)
    written = synthetic.write_if_missing(Path(location)) if env.is_local and data_csv is None else 0
    if written:
        progress(f"wrote {written} rows of synthetic churn data to {location}")
    try:
        text = storage.read_text(location, credential)
    except FileNotFoundError:
        raise UsageError(f"churn data {location} not found; expected the churn table Churn_Modelling.csv") from None
    except IsADirectoryError:
        raise UsageError(f"churn data {location} is a directory; expected a CSV file (Churn_Modelling.csv)") from None
    except UnicodeDecodeError:
        raise UsageError(f"churn data {location} is not UTF-8 text; expected a CSV file") from None
    frame = schema.read_churn_csv(location, text)
    progress(f"read {len(frame)} customers from {location}")
    return frame, location


def _train_and_log(
    experiment_id: str,
    build: str,
    source: str,
    parts: model.Split,
    seed: int,
    source_location: str,
    train_location: str,
    test_location: str,
) -> TrainResult:
    import mlflow
    from threadpoolctl import threadpool_limits

    # Databricks ML runtimes autolog every fit; this run logs explicitly, and the search's fits
    # would otherwise each become a nested run.
    mlflow.autolog(disable=True)
    tags = {contract.TAG_BUILD: build, contract.TAG_SOURCE: source}
    # One OpenMP thread: the booster's threads spin-wait on each other, and on a shared 2-core
    # machine that made the search 10-20 times slower (78 s against 6 s) than running single-threaded.
    with (
        threadpool_limits(limits=1, user_api="openmp"),
        mlflow.start_run(experiment_id=experiment_id, run_name=f"build-{build}", tags=tags) as run,
    ):
        started = time.monotonic()
        found = model.search(parts.train, seed)
        progress(f"searched {found.candidates} candidates in {time.monotonic() - started:.1f}s: {found.best_params}")
        threshold = model.decision_threshold(found, parts.train, seed)
        progress(f"decision threshold {threshold.value:.3f} (F1-optimal out of fold: {threshold.oof_f1:.3f})")
        metrics = model.evaluate(found.model, parts.test, threshold.value)
        scores = ", ".join(f"{name} {value:.3f}" for name, value in metrics.items())
        params = {
            "random_seed": seed,
            "test_size": model.TEST_SIZE,
            "search_folds": model.SEARCH_FOLDS,
            "search_candidates": found.candidates,
            "model": "HistGradientBoostingClassifier",
            **found.best_params,
            "decision_threshold": threshold.value,
            "threshold_rule": THRESHOLD_RULE,
            "serialization": packaging.SERIALIZATION,
            "source_data": source_location,
            "train_data": train_location,
            "test_data": test_location,
            "train_rows": len(parts.train),
            "test_rows": len(parts.test),
        }
        metrics["search_cv_auc"] = found.cv_auc
        metrics["threshold_oof_f1"] = threshold.oof_f1
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        figure = model.roc_figure(found.model, parts.test, f"churn build {build}")
        mlflow.log_figure(figure, ROC_CURVE_ARTIFACT)
        model.close_figure(figure)
        packaging.log_model(
            found.model, parts.train[list(contract.FEATURES)], threshold.value, model.SKOPS_TRUSTED_TYPES
        )
        progress(f"logged run {run.info.run_id}: {scores}")
    return TrainResult(
        run_id=run.info.run_id,
        build=build,
        source=source,
        experiment=contract.EXPERIMENT,
        metrics=metrics,
        train_data=train_location,
        test_data=test_location,
        params={name: str(value) for name, value in params.items()},
    )
