"""The quality gate: a candidate must reach the environment's AUC and not fall behind the model prod serves.

Comparing on the candidate's own test set alone would trust the candidate's data: a build trained
and tested on corrupted labels scores well on its own (equally corrupted) test set. So the
candidate and the champion (the version prod serves) are scored on both test sets, the
candidate's (`runs/<build>/test.csv`) and the champion's, which is a fixed reference:

- the candidate must reach `min_auc` on both, and may not fall more than `max_auc_drop` below the
  champion on either;
- the champion must score on the candidate's test set within `max_champion_drop` of what it scores
  on its own. Far below means the data or its labels changed, which needs a person, not a release.

With no champion yet (prod serves nothing), the first release passes on the threshold alone.
Every figure is recorded on the candidate's version (gate.<slot>.detail).
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
class Model:
    """A model version the gate scores, with the test set its own training held out."""

    version: str
    uri: str
    test: pd.DataFrame
    test_location: str


@dataclass(frozen=True)
class GateResult:
    passed: bool
    auc: float  # the candidate on its own test set
    min_auc: float
    prod_version: str | None
    prod_auc: float | None  # the champion on the candidate's test set
    max_auc_drop: float
    reference_auc: float | None  # the candidate on the champion's test set
    prod_reference_auc: float | None  # the champion on its own test set
    max_champion_drop: float
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(candidate: Model, policy: Gate, champion: Model | None = None) -> GateResult:
    """Score the candidate (and the champion, if any) on both test sets and apply `policy`."""
    auc = score_auc(candidate.uri, candidate.test)
    reasons = []
    if auc < policy.min_auc:
        reasons.append(f"AUC {auc:.4f} is below the minimum {policy.min_auc:.4f}")
    prod_auc = reference_auc = prod_reference_auc = None
    if champion is not None:
        prod_auc = score_auc(champion.uri, candidate.test)
        reference_auc = score_auc(candidate.uri, champion.test)
        prod_reference_auc = score_auc(champion.uri, champion.test)
        champ = f"prod version {champion.version}"
        if prod_reference_auc - prod_auc > policy.max_champion_drop:
            reasons.append(
                f"{champ} scores {prod_auc:.4f} on this build's test set against {prod_reference_auc:.4f} on its own: "
                f"the data or its labels changed (allowed difference {policy.max_champion_drop:.4f}); a person "
                "must check the training data before this build is released"
            )
        if prod_auc - auc > policy.max_auc_drop:
            reasons.append(
                f"AUC {auc:.4f} is {prod_auc - auc:.4f} below {champ} ({prod_auc:.4f}) on this build's test set; "
                f"the allowed drop is {policy.max_auc_drop:.4f}"
            )
        if reference_auc < policy.min_auc:
            reasons.append(
                f"AUC {reference_auc:.4f} on {champ}'s test set ({champion.test_location}) is below the minimum "
                f"{policy.min_auc:.4f}"
            )
        if prod_reference_auc - reference_auc > policy.max_auc_drop:
            reasons.append(
                f"AUC {reference_auc:.4f} is {prod_reference_auc - reference_auc:.4f} below {champ} "
                f"({prod_reference_auc:.4f}) on its test set; the allowed drop is {policy.max_auc_drop:.4f}"
            )
    return GateResult(
        passed=not reasons, auc=round(auc, 6), min_auc=policy.min_auc,
        prod_version=champion.version if champion else None, prod_auc=_round(prod_auc),
        max_auc_drop=policy.max_auc_drop, reference_auc=_round(reference_auc),
        prod_reference_auc=_round(prod_reference_auc), max_champion_drop=policy.max_champion_drop,
        reasons=tuple(reasons),
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


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


def model_of(env: EnvConfig, outputs: StackOutputs | None, run: Run, version: str) -> Model:
    """Model `version`, registered from `run`, with the test set that run held out."""
    from deploy.release.registry import model_uri

    return Model(version, model_uri(version), read_test_split(env, outputs, run), locate_test_split(env, outputs, run))


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
