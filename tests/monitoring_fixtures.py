"""Shared by the monitoring tests: a local slot that serves a logged model version, its request log,
batch scores and outcomes, written in the formats the router, the scoring job and the business use.

`serve` logs a build as training leaves it for the monitor (a finished run tagged with the build, a
model at `model`, the training split at runs/<build>/train.csv), registers its version, and writes
the local slot's state file with all traffic on that version's deployment (no server is started:
the monitor only asks the target which version serves). `probabilities=True` logs a model that
answers the scoring contract (`churn_probability`, `churn`); otherwise a bare-label sklearn model.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from config import EnvConfig
from deploy.core.contract import CATEGORICAL_FEATURES, FEATURES, LABEL, NUMERIC_FEATURES, TAG_BUILD, TAG_SOURCE
from deploy.core.contract import MODEL_ARTIFACT_PATH as MODEL_PATH
from deploy.monitoring import request_log
from deploy.platform import tracking
from deploy.release import registry
from deploy.training import synthetic

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)



class ProbabilityModel(mlflow.pyfunc.PythonModel):
    """Answers the scoring contract: a churn probability and a 0/1 decision per row."""

    def __init__(self, pipeline: Any):
        self.pipeline = pipeline

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        probability = self.pipeline.predict_proba(model_input[list(FEATURES)])[:, 1]
        return pd.DataFrame({"churn_probability": probability, "churn": (probability >= 0.5).astype(int)})


def fitted(train: pd.DataFrame) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    columns = ColumnTransformer([
        ("categorical", OneHotEncoder(handle_unknown="ignore"), list(CATEGORICAL_FEATURES)),
        ("numeric", StandardScaler(), list(NUMERIC_FEATURES)),
    ])
    model = Pipeline([("features", columns), ("classifier", LogisticRegression(max_iter=500))])
    return model.fit(train[list(FEATURES)], train[LABEL])


def serve(env: EnvConfig, build: str, train: pd.DataFrame, slot: str = "prod", probabilities: bool = False) -> str:
    """Log `build` trained on `train`, register it, and make `slot` serve it; returns the model version."""
    import mlflow

    tracking.use_environment(env)
    experiment_id = tracking.ensure_experiment(env)
    audit = tracking.local_data_root(env) / "runs" / build / "train.csv"
    audit.parent.mkdir(parents=True, exist_ok=True)
    train.to_csv(audit, index=False)
    model = fitted(train)
    with mlflow.start_run(experiment_id=experiment_id, tags={TAG_BUILD: build, TAG_SOURCE: "tests@local"}) as run, \
            tempfile.TemporaryDirectory() as folder:
        saved = Path(folder) / MODEL_PATH
        if probabilities:
            mlflow.pyfunc.save_model(saved, python_model=ProbabilityModel(model), pip_requirements=["scikit-learn"])
        else:
            mlflow.sklearn.save_model(model, saved, pip_requirements=["scikit-learn", "pandas"])
        mlflow.log_artifacts(str(saved), artifact_path=MODEL_PATH)
    version = registry.register(mlflow.get_run(run.info.run_id))
    serving_state(env, slot, version)
    return version


def serving_state(env: EnvConfig, slot: str, version: str) -> None:
    """The local slot's state file with all traffic on `version`'s deployment (no process runs)."""
    name = f"churn-v{version}"
    state = {"slot": slot, "port": env.local.port(slot), "router": None, "previous": None,
             "deployments": {name: {"version": version, "port": 1, "process": None}}, "traffic": {name: 100}}
    path = env.local.state_dir / "serving" / f"{slot}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state))


def logged_request(rows: pd.DataFrame, at: datetime, version: str, status: int = 200, latency_ms: float = 12.0,
                   slot: str = "prod", answers: list[Any] | None = None) -> dict[str, Any]:
    """One request-log object as the local router writes it."""
    failed = status >= 400
    records = json.loads(rows[list(FEATURES)].to_json(orient="records"))
    return {
        "time": at.isoformat(timespec="milliseconds"), "slot": slot, "deployment": f"churn-v{version}",
        "version": version, "status": status, "latency_ms": latency_ms, "inputs": records,
        "outputs": None if failed else (answers if answers is not None else [0] * len(records)),
        "error": "INTERNAL_ERROR: the model failed" if failed else None,
    }


def write_log(env: EnvConfig, requests: list[dict[str, Any]], slot: str = "prod", per_file: int = 0) -> list[Path]:
    """Write requests (oldest first) into `<slot>.jsonl`, rotated into `.jsonl.1`, `.jsonl.2`... every `per_file`."""
    folder = request_log.requests_folder(env.local.state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [requests[i:i + per_file] for i in range(0, len(requests), per_file)] if per_file else [requests]
    paths = []
    for age, chunk in enumerate(reversed(chunks)):  # the newest chunk is <slot>.jsonl
        path = folder / (f"{slot}.jsonl" if age == 0 else f"{slot}.jsonl.{age}")
        path.write_text("".join(json.dumps(request) + "\n" for request in chunk))
        paths.append(path)
    return paths


def traffic(env: EnvConfig, version: str, customers: pd.DataFrame, batch: int = 50, now: datetime = NOW,
            probabilities: Any = None) -> list[dict[str, Any]]:
    """The customers as requests of `batch` rows spread over the last day (answers: the model's, if given)."""
    requests = []
    starts = range(0, len(customers), batch)
    for number, start in enumerate(starts):
        rows = customers.iloc[start:start + batch]
        answers = None
        if probabilities is not None:
            answers = [{"churn_probability": float(p), "churn": int(p >= 0.5)} for p in probabilities(rows)]
        at = now - timedelta(hours=20) + timedelta(minutes=number)
        requests.append(logged_request(rows, at, version, answers=answers))
    return requests


def reference_and_current(rows: int = 3000, drift: float = 0.0, seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A training split (8,000 customers) and a current base from another seed (drifted by `drift`)."""
    return synthetic.generate(8000, 11), synthetic.generate(rows, seed, drift=drift)


def write_scores(env: EnvConfig, day: str, customers: pd.DataFrame, probability: np.ndarray, version: str) -> Path:
    """One scoring date's batch scores, as the scoring job writes them locally (Parquet, hive-partitioned)."""
    frame = customers[["CustomerId", *FEATURES]].copy()
    frame["churn_probability"] = probability
    frame["churn"] = (probability >= 0.5).astype(int)
    frame["risk_decile"] = np.ceil(pd.Series(probability).rank(pct=True) * 10).astype(int).to_numpy()
    frame["model_version"] = version
    frame["build"] = "b1"
    frame["run_id"] = "scoring-run"
    frame["scored_at"] = f"{day}T05:00:00+00:00"
    folder = tracking.local_data_root(env) / "scores" / f"scoring_date={day}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-0.parquet"
    frame.to_parquet(path, index=False)
    return path
