"""The quality gate: a candidate must reach the environment's AUC, and not fall behind prod on the same data.

Both models are scored on the candidate build's own test set (`runs/<build>/test.csv`, the audit
trail training wrote), so the comparison with the current prod model is like for like. When no
prod model exists yet, the first release passes on the threshold alone.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from config import EnvConfig, Gate
from deploy.core.contract import FEATURES, LABEL, TAG_BUILD, audit_path
from deploy.core.errors import UsageError
from deploy.platform import tracking

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.entities import Run

    from deploy.platform.outputs import StackOutputs

TEST_DATA_KEY = "test_data"  # the param / tag training logs with the test split's full location


@dataclass(frozen=True)
class GateResult:
    passed: bool
    auc: float
    min_auc: float
    prod_version: str | None
    prod_auc: float | None
    max_auc_drop: float
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(
    candidate_uri: str, test: pd.DataFrame, policy: Gate, prod_version: str | None = None, prod_uri: str | None = None
) -> GateResult:
    """Score the candidate (and the prod model, if any) on `test` and apply `policy`."""
    auc = score_auc(candidate_uri, test)
    reasons = []
    if auc < policy.min_auc:
        reasons.append(f"AUC {auc:.4f} is below the minimum {policy.min_auc:.4f}")
    prod_auc = score_auc(prod_uri, test) if prod_uri else None
    if prod_auc is not None and prod_auc - auc > policy.max_auc_drop:
        reasons.append(
            f"AUC {auc:.4f} is {prod_auc - auc:.4f} below prod version {prod_version} ({prod_auc:.4f}) on the same "
            f"test set; the allowed drop is {policy.max_auc_drop:.4f}"
        )
    return GateResult(
        passed=not reasons, auc=round(auc, 6), min_auc=policy.min_auc, prod_version=prod_version,
        prod_auc=None if prod_auc is None else round(prod_auc, 6), max_auc_drop=policy.max_auc_drop,
        reasons=tuple(reasons),
    )


def score_auc(model_uri: str, test: pd.DataFrame) -> float:
    """ROC AUC of the model at `model_uri` on `test` (features and label), ranked by its churn probability."""
    from sklearn.metrics import roc_auc_score

    from deploy.core.contract import PROBABILITY
    from deploy.release.registry import load_model

    model = load_model(model_uri)
    features = test[list(FEATURES)]
    if "sklearn" in model.metadata.flavors:  # a model logged before the scoring contract: its fitted pipeline
        pipeline = model.get_raw_model()
        if hasattr(pipeline, "predict_proba"):
            scores = pipeline.predict_proba(features)[:, list(pipeline.classes_).index(1)]
        else:  # a model without probabilities is ranked by its decisions
            scores = pipeline.predict(features)
        return float(roc_auc_score(test[LABEL], scores))
    schema = model.metadata.get_input_schema()
    if schema is not None and schema.has_input_names():  # the signature's types, as a scoring request gets them
        features = features.astype({spec.name: spec.type.to_pandas() for spec in schema.inputs})
    scores = model.predict(features)[PROBABILITY].to_numpy()
    return float(roc_auc_score(test[LABEL], scores))


def locate_test_split(env: EnvConfig, outputs: StackOutputs | None, run: Run) -> str:
    """Where `run`'s test split lives: as training recorded it, else the audit trail's standard place."""
    recorded = run.data.tags.get(TEST_DATA_KEY) or run.data.params.get(TEST_DATA_KEY)
    if recorded:
        return recorded
    from deploy.platform import storage

    return storage.join(tracking.data_root(env, outputs), audit_path(run.data.tags[TAG_BUILD], "test"))


def read_test_split(env: EnvConfig, outputs: StackOutputs | None, run: Run) -> pd.DataFrame:
    """The build's test split, checked to have every feature and the label."""
    import pandas as pd

    from deploy.platform import storage

    location = locate_test_split(env, outputs, run)
    credential = None
    if storage.is_abfss(location):
        from deploy.platform.azure_auth import credential as env_credential

        credential = env_credential(env)
    try:
        frame = pd.read_csv(io.StringIO(storage.read_text(location, credential)))
    except (FileNotFoundError, pd.errors.EmptyDataError) as exc:
        raise UsageError(f"test set {location} of run {run.info.run_id} is missing or empty ({exc})") from None
    missing = [column for column in (*FEATURES, LABEL) if column not in frame.columns]
    if missing or frame.empty:
        what = f"lacks column {missing[0]}" if missing else "has no rows"
        raise UsageError(f"test set {location} {what}; expected the features and the label {LABEL}")
    return frame
