"""The scoring contract where the release checks it: smoke validation's comparison and the gate's AUC."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from config import Validation, load_environment
from deploy.core import contract
from deploy.release import gate, smoke
from tests.conftest import PROJECT_ROOT

ANSWER = {contract.PROBABILITY: 0.8731, contract.DECISION: 1}


def test_the_same_answer_allows_float_noise_in_the_probability_and_none_in_the_decision():
    assert smoke.same(ANSWER, {contract.PROBABILITY: 0.8731 + 5e-7, contract.DECISION: 1})
    assert not smoke.same(ANSWER, {contract.PROBABILITY: 0.8731 + 5e-6, contract.DECISION: 1})
    assert not smoke.same(ANSWER, {contract.PROBABILITY: 0.8731, contract.DECISION: 0})
    assert not smoke.same(ANSWER, {contract.PROBABILITY: 0.8731})  # a field missing
    assert not smoke.same(ANSWER, 1)  # a bare label is not the contract's answer
    assert smoke.same(1, 1) and not smoke.same(1, 0)  # labels of older models: exactly


def test_validation_counts_a_probability_off_by_more_than_the_tolerance_as_a_mismatch():
    rows = pd.DataFrame({"Age": [40, 50, 60]})
    expected = [{contract.PROBABILITY: 0.1 * (index + 1), contract.DECISION: 0} for index in range(3)]

    def served(frame: pd.DataFrame) -> list[dict]:
        index = int(frame.index[0])
        shift = 1e-3 if index == 2 else 1e-9
        return [{contract.PROBABILITY: 0.1 * (index + 1) + shift, contract.DECISION: 0}]

    result = smoke.validate(served, rows, expected, Validation(rows=3, max_p95_ms=60_000))
    assert (result.rows, result.mismatches, result.passed) == (3, 1, False)
    assert "row 2: predicted {'churn_probability': 0.301" in result.reasons[0]


def test_the_example_response_is_the_contracts_shape():
    document = json.loads((PROJECT_ROOT / "examples" / "score-response.json").read_text())
    assert [sorted(answer) for answer in document["predictions"]] == [[contract.DECISION, contract.PROBABILITY]] * 2
    assert all(0 <= answer[contract.PROBABILITY] <= 1 for answer in document["predictions"])


def test_the_gate_still_scores_a_model_from_before_the_contract(tmp_path: Path, local_config):
    """The prod model of a first release in the new format is a scikit-learn flavor model: still comparable."""
    import tempfile

    import mlflow
    from mlflow.models import infer_signature
    from sklearn.metrics import roc_auc_score

    from deploy.platform import tracking
    from tests.rollout_fixtures import churn_frame, fitted_model

    env = load_environment("local", local_config)
    tracking.use_environment(env)
    frame = churn_frame(400, seed=3)
    fitted = fitted_model("good", frame.head(300))
    test = frame.tail(100)
    features = test[list(contract.FEATURES)]
    with mlflow.start_run(experiment_id=tracking.ensure_experiment(env)) as run, \
            tempfile.TemporaryDirectory() as folder:
        mlflow.sklearn.save_model(fitted, Path(folder) / "model",
                                  signature=infer_signature(features, fitted.predict(features)))
        mlflow.log_artifacts(str(Path(folder) / "model"), artifact_path="model")
    auc = gate.score_auc(f"runs:/{run.info.run_id}/model", test)
    assert auc == pytest.approx(roc_auc_score(test[contract.LABEL], fitted.predict_proba(features)[:, 1]))
    assert auc > 0.75


def test_the_gate_ranks_a_contract_model_by_its_probability(local_config):
    import mlflow
    from sklearn.metrics import roc_auc_score

    from tests.rollout_fixtures import build_test_set, log_build

    env = load_environment("local", local_config)
    run_id = log_build(env, "b-gate-contract")
    test = build_test_set(env, "b-gate-contract")
    uri = f"runs:/{run_id}/{contract.MODEL_ARTIFACT_PATH}"
    probabilities = mlflow.pyfunc.load_model(uri).predict(test[list(contract.FEATURES)])[contract.PROBABILITY]
    assert gate.score_auc(uri, test) == pytest.approx(roc_auc_score(test[contract.LABEL], probabilities))
