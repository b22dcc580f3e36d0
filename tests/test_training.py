"""Training: the synthetic table, the input checks, the data container access, and one build's logged run."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import create_autospec

import pandas as pd
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.filedatalake import DataLakeServiceClient

from config import load_environment
from deploy.core import contract
from deploy.core.errors import UsageError
from deploy.platform import storage, tracking
from deploy.training import schema, synthetic
from tests.conftest import SHIPPED_CONFIG

ROWS = 2_000  # enough for a stratified split and a 3-fold search, quick enough for the suite


def local_env(folder: Path):
    config = folder / "environments.toml"
    shipped = SHIPPED_CONFIG.read_text()
    config.write_text(shipped.replace('state_dir = ".state/local"', f'state_dir = "{folder / "state"}"'))
    return load_environment("local", config)


def write_csv(folder: Path, frame: pd.DataFrame, name: str = "churn.csv") -> Path:
    path = folder / name
    frame.to_csv(path, index=False)
    return path


# --- synthetic data -------------------------------------------------------------------------------


def test_synthetic_table_has_exactly_the_public_schema_and_is_deterministic():
    table = synthetic.generate()
    assert tuple(table.columns) == contract.COLUMNS and len(table) == 10_000
    assert table.equals(synthetic.generate())
    assert not table.equals(synthetic.generate(seed=7))
    assert set(table.Geography) == {"France", "Spain", "Germany"} and set(table.Gender) == {"Male", "Female"}
    assert table.CustomerId.is_unique and list(table.RowNumber[:3]) == [1, 2, 3]
    assert 0.18 <= table.Exited.mean() <= 0.23
    assert set(table.NumOfProducts) <= {1, 2, 3, 4} and set(table.HasCrCard) == {0, 1}
    schema.check_churn_frame(table, "synthetic")  # passes its own input checks


def test_synthetic_churn_follows_the_public_tables_signal():
    table = synthetic.generate()
    rate = table.groupby(table.Geography).Exited.mean()
    assert rate["Germany"] > rate["France"] + 0.05
    assert table[table.NumOfProducts >= 3].Exited.mean() > 2 * table[table.NumOfProducts <= 2].Exited.mean()
    assert table[table.IsActiveMember == 0].Exited.mean() > table[table.IsActiveMember == 1].Exited.mean()
    assert table[table.Age.between(50, 60)].Exited.mean() > 2 * table[table.Age < 35].Exited.mean()


def test_write_if_missing_writes_once(tmp_path):
    path = tmp_path / "data" / "Churn_Modelling.csv"
    assert synthetic.write_if_missing(path, rows=50) == 50
    assert synthetic.write_if_missing(path, rows=50) == 0
    assert len(pd.read_csv(path)) == 50 and not list(tmp_path.glob("data/*.partial"))


# --- input checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (lambda table: table.drop(columns=["Age"]), r"lacks column Age; expected columns RowNumber, "),
        (lambda table: table.assign(Age=table.Age.astype(str).where(table.index != 3, "forty")),
         r"column Age holds 'forty' on line 5; expected a number"),
        (lambda table: table.assign(Balance=table.Balance.where(table.index != 0, None)),
         r"column Balance is empty on line 2"),
        (lambda table: table.assign(Exited=table.Exited.where(table.index != 1, 2)),
         r"column Exited holds 2 on line 3; expected 0 or 1"),
        (lambda table: table.assign(Exited=0), r"column Exited has 0 churned and 40 retained rows"),
        (lambda table: table.iloc[0:0], r"has a header but no rows"),
    ],
    ids=["missing", "mistyped", "empty-value", "bad-label", "one-class", "header-only"],
)
def test_a_bad_csv_fails_with_one_line_naming_the_column(tmp_path, break_it, expected):
    path = write_csv(tmp_path, break_it(synthetic.generate(40)))
    with pytest.raises(UsageError, match=expected) as raised:
        schema.read_churn_csv(path)
    assert "\n" not in str(raised.value) and str(path) in str(raised.value)


def test_an_empty_or_absent_file_is_named(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(UsageError, match=r"empty.csv is empty; expected a header \(RowNumber, "):
        schema.read_churn_csv(empty)
    with pytest.raises(UsageError, match=r"absent.csv not found"):
        schema.read_churn_csv(tmp_path / "absent.csv")


def test_identifier_columns_are_optional_and_types_are_normalised(tmp_path):
    table = synthetic.generate(40).drop(columns=list(contract.ID_COLUMNS))
    checked = schema.read_churn_csv(write_csv(tmp_path, table))
    assert checked.Exited.dtype.kind == "i" and checked.Geography.map(type).eq(str).all()


# --- the data container ---------------------------------------------------------------------------


def test_abfss_locations_parse_and_join():
    root = "abfss://churndata@chrndevdata.dfs.core.windows.net"
    location = storage.join(root, contract.audit_path("20261126.3", "test"))
    assert location == "abfss://churndata@chrndevdata.dfs.core.windows.net/runs/20261126.3/test.csv"
    assert storage.parse_abfss(location) == storage.AbfssLocation(
        "https://chrndevdata.dfs.core.windows.net", "churndata", "runs/20261126.3/test.csv"
    )
    with pytest.raises(ValueError, match="not an abfss URI"):
        storage.parse_abfss("https://chrndevdata.dfs.core.windows.net/churndata/x.csv")


def test_abfss_reads_and_writes_go_through_the_data_lake_client():
    service = create_autospec(DataLakeServiceClient, instance=True)
    file = service.get_file_system_client.return_value.get_file_client.return_value
    file.download_file.return_value.readall.return_value = b"a,b\n1,2\n"
    location = "abfss://churndata@acct.dfs.core.windows.net/runs/b1/train.csv"

    storage.write_text(location, "a,b\n1,2\n", service_client=service)
    assert storage.read_text(location, service_client=service) == "a,b\n1,2\n"

    service.get_file_system_client.assert_called_with("churndata")
    service.get_file_system_client.return_value.get_file_client.assert_called_with("runs/b1/train.csv")
    file.upload_data.assert_called_once_with(b"a,b\n1,2\n", overwrite=True)
    file.download_file.side_effect = ResourceNotFoundError("The specified path does not exist.")
    with pytest.raises(FileNotFoundError, match=r"train\.csv"):
        storage.read_text(location, service_client=service)


# --- one build, trained and logged ----------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One local environment with one build trained on 2,000 synthetic rows, in a store that, like the
    Azure ML tracking server, has no MLflow 3 logged-models API."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from deploy.training import train_build

    def not_on_azure_ml(*args, **kwargs):
        raise MlflowException("API request to endpoint /api/2.0/mlflow/logged-models failed with error code 404")

    folder = tmp_path_factory.mktemp("training")
    env = local_env(folder)
    data = write_csv(folder, synthetic.generate(ROWS))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SqlAlchemyStore, "create_logged_model", not_on_azure_ml)
        result = train_build(env, "20261126.3", "churn-repo@0123abc", data_csv=data)
    return env, data, result


@pytest.fixture
def store(trained):
    """MLflow pointed at the trained environment (other tests may have pointed it elsewhere)."""
    import mlflow

    env, _, _ = trained
    tracking.use_environment(env)
    return mlflow.MlflowClient()


def test_the_run_is_tagged_with_the_build_and_records_its_parameters(trained, store):
    env, data, result = trained
    run = store.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert store.get_experiment(run.info.experiment_id).name == contract.EXPERIMENT == result.experiment
    assert run.data.tags[contract.TAG_BUILD] == "20261126.3"
    assert run.data.tags[contract.TAG_SOURCE] == "churn-repo@0123abc"
    params = run.data.params
    assert params["random_seed"] == "42" and params["test_size"] == "0.2"
    assert {"learning_rate", "max_leaf_nodes", "min_samples_leaf"} <= set(params)
    data_root = tracking.local_data_root(env)
    assert params["train_data"] == str(data_root / "runs" / "20261126.3" / "train.csv") == result.train_data
    assert params["test_data"] == str(data_root / "runs" / "20261126.3" / "test.csv") == result.test_data
    assert params["source_data"] == str(data)


def test_the_run_logs_held_out_metrics(trained, store):
    _, _, result = trained
    metrics = store.get_run(result.run_id).data.metrics
    assert {"auc", "accuracy", "precision", "recall", "f1"} <= set(metrics)
    assert all(0.0 <= metrics[name] <= 1.0 for name in ("auc", "accuracy", "precision", "recall", "f1"))
    assert metrics["auc"] > 0.75  # the synthetic signal is learnable
    assert result.metrics["auc"] == pytest.approx(metrics["auc"])


def test_the_run_holds_the_model_and_a_roc_curve(trained, store):
    _, _, result = trained
    artifacts = {item.path for item in store.list_artifacts(result.run_id)}
    assert {"roc_curve.png", "model"} <= artifacts
    model_files = {item.path for item in store.list_artifacts(result.run_id, "model")}
    assert {"model/MLmodel", "model/requirements.txt", "model/input_example.json"} <= model_files
    png = Path(store.download_artifacts(result.run_id, "roc_curve.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_logged_model_answers_the_scoring_contract_and_declares_exactly_the_features(trained):
    import mlflow

    _, _, result = trained
    uri = f"runs:/{result.run_id}/{contract.MODEL_ARTIFACT_PATH}"
    test = pd.read_csv(result.test_data)
    pyfunc = mlflow.pyfunc.load_model(uri)
    assert pyfunc.metadata.get_input_schema().input_names() == list(contract.FEATURES)
    assert pyfunc.metadata.get_output_schema().input_names() == [contract.PROBABILITY, contract.DECISION]
    answer = pyfunc.predict(test[list(contract.FEATURES)])
    assert list(answer.columns) == [contract.PROBABILITY, contract.DECISION] and len(answer) == len(test)
    probability = answer[contract.PROBABILITY]
    assert probability.between(0, 1).all() and probability.nunique() > 10
    threshold = float(result.params["decision_threshold"])
    assert (answer[contract.DECISION] == (probability >= threshold).astype(int)).all()
    assert set(answer[contract.DECISION]) == {0, 1}


def test_the_threshold_is_f1_optimal_on_the_training_split_and_logged(trained, store):
    from sklearn.metrics import f1_score

    _, _, result = trained
    run = store.get_run(result.run_id)
    threshold = float(run.data.params["decision_threshold"])
    assert run.data.params["threshold_rule"] == "f1-optimal-out-of-fold" and 0.0 < threshold < 1.0
    assert run.data.metrics["threshold_oof_f1"] > 0.4
    # Chosen on the training split: on the test split, F1 at the threshold is the logged f1, and it beats 0.5.
    test = pd.read_csv(result.test_data)
    import mlflow

    probability = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model").predict(test[list(contract.FEATURES)])[
        contract.PROBABILITY
    ]
    at_threshold = f1_score(test[contract.LABEL], probability >= threshold)
    assert at_threshold == pytest.approx(run.data.metrics["f1"])
    assert at_threshold >= f1_score(test[contract.LABEL], probability >= 0.5) - 0.02


def test_the_model_is_skops_and_code_with_no_pickle_and_pinned_requirements(trained):
    """The serialization is explicit (issue 10): a skops pipeline, loaded by the model's own code file."""
    import mlflow
    import skops.io
    import yaml

    from deploy.training import model, packaging

    _, _, result = trained
    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{result.run_id}/{contract.MODEL_ARTIFACT_PATH}"))
    files = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}
    assert "artifacts/pipeline.skops" in files and "served_model.py" in files
    assert not [name for name in files if name.endswith((".pkl", ".pickle", ".joblib"))]
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    assert set(mlmodel["flavors"]) == {"python_function"}  # no sklearn flavor: nothing pickled by MLflow
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in pyfunc
    assert pyfunc["config"]["threshold"] == pytest.approx(float(result.params["decision_threshold"]))
    assert mlmodel["metadata"]["serialization"] == "skops"
    assert mlmodel["metadata"]["skops_trusted_types"] == list(model.SKOPS_TRUSTED_TYPES)
    assert skops.io.get_untrusted_types(file=folder / "artifacts" / "pipeline.skops") == list(model.SKOPS_TRUSTED_TYPES)
    requirements = (folder / "requirements.txt").read_text().split()
    assert requirements == packaging.model_requirements()
    assert {line.split("==")[0] for line in requirements} == {
        "mlflow", "scikit-learn", "skops", "pandas", "numpy", "scipy"
    }
    assert "cloudpickle" not in " ".join(requirements)


def test_saving_refuses_a_type_nobody_reviewed(tmp_path):
    from sklearn.ensemble import HistGradientBoostingClassifier

    from deploy.training import packaging

    frame = synthetic.generate(200)
    fitted = HistGradientBoostingClassifier(max_iter=5).fit(frame[["Age", "Balance"]], frame[contract.LABEL])
    features = frame[list(contract.FEATURES)]
    with pytest.raises(packaging.UntrustedModelTypes, match="TreePredictor"):
        packaging.save_model(fitted, features, 0.5, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_the_served_model_file_stays_self_contained_and_names_the_contract():
    """MLflow runs served_model.py where only the model's requirements are installed: no project imports."""
    import ast

    from deploy.training import packaging

    tree = ast.parse(packaging.SERVED_MODEL_CODE.read_text())
    imported = {
        name.split(".")[0]
        for node in ast.walk(tree)
        for name in (
            [alias.name for alias in node.names] if isinstance(node, ast.Import)
            else [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        )
    }
    assert imported <= {"__future__", "typing", "mlflow", "numpy", "pandas", "skops"}
    assigned = {
        target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
        for target in node.targets if isinstance(target, ast.Name) and isinstance(node.value, ast.Constant)
    }
    assert (assigned["PROBABILITY"], assigned["DECISION"]) == (contract.PROBABILITY, contract.DECISION)


def test_the_audit_trail_holds_the_stratified_split_without_identifiers(trained):
    _, data, result = trained
    train, test = pd.read_csv(result.train_data), pd.read_csv(result.test_data)
    assert list(train.columns) == list(test.columns) == [*contract.FEATURES, contract.LABEL]
    assert (len(train), len(test)) == (ROWS * 0.8, ROWS * 0.2)
    source_rate = pd.read_csv(data).Exited.mean()
    assert abs(test.Exited.mean() - source_rate) < 0.01 and abs(train.Exited.mean() - source_rate) < 0.01


def test_training_the_same_build_again_reports_the_existing_run(trained, store):
    from deploy.training import train_build

    env, data, result = trained
    again = train_build(env, "20261126.3", "churn-repo@0123abc", data_csv=data)
    assert again.reused and again.run_id == result.run_id
    assert again.metrics["auc"] == pytest.approx(result.metrics["auc"])
    runs = store.search_runs([store.get_run(result.run_id).info.experiment_id], "tags.buildnumber = '20261126.3'")
    assert [run.info.run_id for run in runs] == [result.run_id]


def test_force_retrains_and_leaves_one_finished_run_for_the_build(tmp_path):
    import mlflow

    from deploy.training import train_build

    env = local_env(tmp_path)
    data = write_csv(tmp_path, synthetic.generate(ROWS))
    first = train_build(env, "b-force", "ci@1", data_csv=data)
    second = train_build(env, "b-force", "ci@2", data_csv=data, force=True)
    assert second.run_id != first.run_id and not second.reused
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(contract.EXPERIMENT).experiment_id
    runs = client.search_runs([experiment], "tags.buildnumber = 'b-force'")
    assert [run.info.run_id for run in runs] == [second.run_id]
    old = client.get_run(first.run_id)
    assert old.info.lifecycle_stage == "deleted" and old.data.tags["superseded_by"] == second.run_id


def test_a_failed_training_leaves_a_failed_run_that_does_not_count(tmp_path, monkeypatch):
    import mlflow

    from deploy.training import model, train_build

    env = local_env(tmp_path)
    data = write_csv(tmp_path, synthetic.generate(ROWS))

    def broken_search(*args, **kwargs):
        raise MemoryError("out of memory in the search")

    monkeypatch.setattr(model, "search", broken_search)
    with pytest.raises(MemoryError):
        train_build(env, "b-fail", "ci@1", data_csv=data)
    runs = mlflow.search_runs(experiment_names=[contract.EXPERIMENT], output_format="list")
    assert [run.info.status for run in runs] == ["FAILED"]
    monkeypatch.undo()
    assert not train_build(env, "b-fail", "ci@1", data_csv=data).reused


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    from deploy.training import train_build

    env = local_env(tmp_path)
    bad = write_csv(tmp_path, synthetic.generate(40).drop(columns=["Geography"]))
    with pytest.raises(UsageError, match="lacks column Geography"):
        train_build(env, "b-bad", "ci@1", data_csv=bad)
    assert not (tracking.local_data_root(env) / "runs").exists()
    with pytest.raises(UsageError, match="build id 'a/b' is invalid"):
        train_build(env, "a/b", "ci@1", data_csv=bad)
    with pytest.raises(UsageError, match=r"build id '20261126.3\\n' is invalid"):  # no trailing newline
        train_build(env, "20261126.3\n", "ci@1", data_csv=bad)
    dev = load_environment("dev", tmp_path / "environments.toml")
    with pytest.raises(UsageError, match="--data is for the local environment only"):
        train_build(dev, "b-bad", "ci@1", data_csv=bad)
