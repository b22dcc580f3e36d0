"""`monitor` for one slot, top-down: reference, current, signals, verdict, record.

1. the window (`7d`, `36h`) and the reference: the training split of the version the slot serves;
2. the current rows, streamed: the slot's request log (locally) and the batch scores of the window;
3. the signals: feature drift, prediction drift, data quality, the slot's health (the request log
   locally, Azure Monitor metrics on Azure), realized quality against the outcomes that arrived;
4. the verdict: `crossed` when any signal crossed its threshold (exit status 3), else `ok`; a signal
   with too few rows says "not enough data" and never counts as "no drift";
5. the record: an MLflow run in experiment `churn-monitoring` (tags environment, slot, version,
   build, window, verdict; every statistic a metric; report.html, summary.json and charts/*.png).

Which crossings call for retraining: feature drift, prediction drift and realized quality (a model
trained on newer data can fix those). Health and data quality crossings are reported and exit 3 too,
but retraining cannot fix a slow endpoint or a caller that sends nulls, so they start no training.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config import EnvConfig
from deploy.core.contract import FEATURES, PROBABILITY
from deploy.core.report import progress
from deploy.monitoring import drift, health, realized, request_log
from deploy.monitoring.reference import load_reference
from deploy.monitoring.sources import DataContainer
from deploy.monitoring.window import Window, parse_window
from deploy.platform import tracking

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from deploy.platform.outputs import StackOutputs
    from deploy.release.targets.base import Target

EXPERIMENT = "churn-monitoring"  # beside the contract's automl-churn and churn-scoring
CROSSED = "crossed"
OK = "ok"
RETRAIN_SIGNALS = ("features", "predictions", "realized")
BATCH_COLUMNS = [*FEATURES, PROBABILITY, "model_version"]
REPORT_ARTIFACT = "report.html"


@dataclass
class MonitorResult:
    environment: str
    slot: str
    endpoint: str
    version: str
    build: str
    window: dict[str, str]
    rows: dict[str, Any]
    signals: dict[str, Any]
    verdict: str
    crossed: list[str]
    retrain_wanted: bool
    at: str
    experiment: str = EXPERIMENT
    run_id: str | None = None
    report: str | None = None
    retrain: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_monitor(
    env: EnvConfig, slot: str, window_text: str, *, outputs: StackOutputs | None = None, target: Target | None = None,
    credential: TokenCredential | None = None, spark: Any = None, metrics_client: Any = None,
    now: datetime | None = None,
) -> MonitorResult:
    """Monitor `slot` over the window ending `now`; returns the result (its run already recorded)."""
    from deploy.release import targets

    window = parse_window(window_text, now)
    tracking.use_environment(env, outputs)
    target = target or targets.for_environment(env, outputs)
    container = DataContainer(tracking.data_root(env, outputs), spark)

    # 1. The reference: what the serving version was trained on, and its probabilities there.
    reference = load_reference(env, slot, target, container.root, credential)
    progress(f"monitor {reference.endpoint} ({slot}): version {reference.version}, build {reference.build}, "
             f"window {window.text} from {window.start:%Y-%m-%d %H:%M} UTC; reference {len(reference.train)} rows")
    features = drift.FeatureProfiles(reference.train)
    predictions = drift.PredictionProfile(reference.probabilities)  # loads the model only if needed

    # 2. The current rows: the slot's request log (locally), then the window's batch scores.
    requests = health.RequestHealth()
    online_source = _read_request_log(env, slot, window, reference.version, features, predictions, requests)
    batch_rows, scoring_dates = _read_batch_scores(container, window, reference.version, features, predictions)

    # 3. The signals.
    thresholds = env.monitoring
    if env.is_local:
        slot_health = requests.summary(env, "request log")
    else:
        slot_health = _azure_health(env, outputs, reference, window, credential, metrics_client)
    signals = {
        "features": features.drift(thresholds),
        "predictions": predictions.drift(thresholds),
        "quality": features.quality(thresholds),
        "health": slot_health,
        "realized": realized.realized_quality(env, container, window.end.date()),
    }

    # 4. The verdict.
    crossed = _crossed(signals)
    result = MonitorResult(
        environment=env.name, slot=slot, endpoint=reference.endpoint, version=reference.version,
        build=reference.build, window={"text": window.text, "start": _iso(window.start), "end": _iso(window.end)},
        rows={"online": requests.rows if env.is_local else 0, "online_source": online_source, "batch": batch_rows,
              "scoring_dates": scoring_dates, "reference": len(reference.train)},
        signals=signals, verdict=CROSSED if crossed else OK, crossed=crossed,
        retrain_wanted=any(name.split(":")[0] in RETRAIN_SIGNALS for name in crossed), at=_iso(window.end),
    )

    # 5. The record.
    _record(env, result)
    return result


def _read_request_log(
    env: EnvConfig, slot: str, window: Window, version: str, features: drift.FeatureProfiles,
    predictions: drift.PredictionProfile, requests: health.RequestHealth,
) -> str:
    if not env.is_local:
        # On Azure ML the deployments' data collector writes model inputs and outputs to the workspace's
        # blob store; this monitor reads the batch scores there and the endpoint's metrics.
        return "not read on Azure: Azure ML's data collector holds the online inputs"
    files = request_log.log_files(env.local.state_dir, slot)
    if not files:
        return f"no request log at {request_log.requests_folder(env.local.state_dir) / f'{slot}.jsonl'}"
    reading = request_log.LogReading()
    for batch in request_log.read_requests(files, window, reading):
        requests.add(batch.requests)
        features.add(batch.inputs)
        predictions.add(*request_log.probabilities(batch, version))
    skipped = f", {reading.unreadable_lines} unreadable lines skipped" if reading.unreadable_lines else ""
    return f"request log, {reading.files} files{skipped}"


def _read_batch_scores(
    container: DataContainer, window: Window, version: str, features: drift.FeatureProfiles,
    predictions: drift.PredictionProfile,
) -> tuple[int, list[str]]:
    rows = 0
    dates = container.score_dates(window.first_date, window.last_date)
    for day in dates:
        for batch in container.scores(day, BATCH_COLUMNS):
            rows += len(batch)
            features.add(batch)
            if PROBABILITY in batch.columns:
                same = batch if "model_version" not in batch.columns else \
                    batch[batch["model_version"].astype(str) == version]
                predictions.add(same[PROBABILITY].dropna().to_numpy())
    return rows, [day.isoformat() for day in dates]


def _azure_health(
    env: EnvConfig, outputs: StackOutputs | None, reference: Any, window: Window, credential: TokenCredential | None,
    client: Any,
) -> dict[str, Any]:
    assert outputs is not None, "Azure environments need their stack outputs"
    if client is None:
        if credential is None:
            from deploy.platform.azure_auth import credential as env_credential

            credential = env_credential(env)
        client = health.monitor_client(env, outputs, credential)
    resource = health.deployment_resource_id(outputs, reference.endpoint, reference.deployment)
    return health.endpoint_health(env, client, resource, window)


def _crossed(signals: dict[str, Any]) -> list[str]:
    crossed = [f"features:{name}" for name, entry in signals["features"].items() if entry["status"] == CROSSED]
    if signals["predictions"]["status"] == CROSSED:
        crossed.append("predictions")
    crossed += [f"quality:{name}" for name, entry in signals["quality"].items() if entry["status"] == CROSSED]
    crossed += [f"health:{name}" for name in signals["health"].get("crossed", [])]
    if signals["realized"]["status"] == CROSSED:
        crossed.append("realized")
    return crossed


def metrics_of(result: MonitorResult) -> dict[str, float]:
    """Every statistic as an MLflow metric (names: <signal>.<feature>.<statistic>)."""
    metrics: dict[str, float] = {"rows.online": result.rows["online"], "rows.batch": result.rows["batch"],
                                 "crossed": len(result.crossed)}
    signals = result.signals
    for name, entry in {**signals["features"], PROBABILITY: signals["predictions"]}.items():
        for key in ("value", "p_value", "test_statistic", "rows"):
            if isinstance(entry.get(key), int | float):
                label = "jensen_shannon" if key == "value" else key
                metrics[f"drift.{name}.{label}"] = float(entry[key])
    for name, entry in signals["quality"].items():
        for key in ("null_share", "out_of_range_share", "unseen_share"):
            if isinstance(entry.get(key), int | float):
                metrics[f"quality.{name}.{key}"] = float(entry[key])
    for key in ("requests", "failed", "server_errors", "error_rate", "p95_latency_ms", "p50", "rows"):
        if isinstance(signals["health"].get(key), int | float):
            metrics[f"health.{key}"] = float(signals["health"][key])
    for day, entry in signals["realized"].get("dates", {}).items():
        if entry.get("auc") is not None:
            metrics[f"realized.{day}.auc"] = entry["auc"]
        metrics[f"realized.{day}.with_outcome"] = float(entry["with_outcome"])
    if signals["realized"].get("value") is not None:
        metrics["realized.auc"] = signals["realized"]["value"]
    return metrics


def _record(env: EnvConfig, result: MonitorResult) -> None:
    """The run in experiment churn-monitoring, with the report people look at."""
    import mlflow

    from deploy.monitoring import report

    experiment_id = tracking.ensure_experiment(env, EXPERIMENT)
    tags = {"environment": env.name, "slot": result.slot, "version": result.version, "build": result.build,
            "window": result.window["text"], "verdict": result.verdict, "endpoint": result.endpoint}
    with (
        mlflow.start_run(experiment_id=experiment_id, run_name=f"{result.slot}-{result.at}", tags=tags) as run,
        tempfile.TemporaryDirectory() as scratch,
    ):
        result.run_id = run.info.run_id
        metrics = metrics_of(result)
        client = mlflow.MlflowClient()
        names = sorted(metrics)
        for start in range(0, len(names), 500):  # log_batch takes at most 1000 metrics
            chunk = {name: metrics[name] for name in names[start:start + 500]}
            mlflow.log_metrics(chunk)
        folder = Path(scratch)
        drawn = report.charts(result.as_dict(), folder / "charts")
        (folder / REPORT_ARTIFACT).write_text(report.html_report(result.as_dict(), drawn))
        (folder / "summary.json").write_text(json.dumps(result.as_dict(), indent=2, sort_keys=True, default=str))
        mlflow.log_artifacts(str(folder))
        result.report = f"{run.info.artifact_uri.rstrip('/')}/{REPORT_ARTIFACT}"
        client.set_tag(run.info.run_id, "crossed", ",".join(result.crossed)[:5000] or "-")
    if result.report.startswith("file://"):
        result.report = result.report.removeprefix("file://")


def latest_verdict(slot: str) -> dict[str, Any] | None:
    """The newest monitor run of `slot` in this environment's store: its verdict and when it ran (for status).
    Call after tracking.use_environment."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return None
    runs = mlflow.MlflowClient().search_runs(
        [experiment.experiment_id], f"tags.slot = '{slot}'", order_by=["start_time DESC"], max_results=1,
    )
    if not runs:
        return None
    run = runs[0]
    started = datetime.fromtimestamp(run.info.start_time / 1000, UTC)
    return {"verdict": run.data.tags.get("verdict"), "crossed": run.data.tags.get("crossed", "-"),
            "version": run.data.tags.get("version"), "window": run.data.tags.get("window"),
            "at": _iso(started), "run_id": run.info.run_id}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")
