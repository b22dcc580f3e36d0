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


def test_the_logged_model_loads_predicts_and_declares_exactly_the_features(trained):
    import mlflow

    _, _, result = trained
    uri = f"runs:/{result.run_id}/{contract.MODEL_ARTIFACT_PATH}"
    test = pd.read_csv(result.test_data)
    sklearn_model = mlflow.sklearn.load_model(uri)
    scores = sklearn_model.predict_proba(test[list(contract.FEATURES)])[:, 1]
    assert len(scores) == len(test) and ((scores >= 0) & (scores <= 1)).all()

    pyfunc = mlflow.pyfunc.load_model(uri)
    assert pyfunc.metadata.get_input_schema().input_names() == list(contract.FEATURES)
    predictions = pyfunc.predict(test[list(contract.FEATURES)].head(5))
    assert set(pd.Series(predictions).unique()) <= {0, 1}
    requirements = Path(mlflow.artifacts.download_artifacts(f"{uri}/requirements.txt")).read_text()
    assert "scikit-learn==" in requirements and "skops==" in requirements


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
