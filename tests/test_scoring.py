"""Batch scoring on a real local Spark session: the scores table, its lineage, atomic re-runs, bad input.

One module-wide environment holds two registered versions (small logistic regressions logged the way
training logs models) and a 400-customer table; every test shares the suite's Spark session.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from unittest.mock import PropertyMock, create_autospec, patch

import pandas as pd
import pytest

from config import load_environment
from deploy.core import contract
from deploy.core.errors import UsageError
from deploy.platform import tracking
from deploy.release import registry
from deploy.scoring import batch, lineage, scores_table
from deploy.scoring.request import scoring_request
from deploy.training import synthetic
from tests.conftest import local_config_text
from tests.rollout_fixtures import THRESHOLD, log_build

CUSTOMERS = 400
SCORES_COLUMNS = [
    contract.ID_COLUMN, *contract.FEATURES, contract.PROBABILITY, contract.DECISION, "risk_decile",
    "model_version", "build", "run_id", "scoring_run_id", "scored_at",
]


class ScoringWorld:
    """An environment with versions 1 (a good build) and 2 (a weak one) registered, and a customer table."""

    def __init__(self, folder: Path):
        self.config = folder / "environments.toml"
        self.config.write_text(local_config_text(folder / "state"))
        self.env = load_environment("local", self.config)
        self.runs = {}
        for build, quality in (("b-score-1", "good"), ("b-score-2", "weak")):
            run_id = log_build(self.env, build, quality=quality, seed=len(self.runs))
            self.runs[registry.register(registry.find_run(build))] = (build, run_id)
        self.customers = folder / "customers.csv"
        synthetic.generate(CUSTOMERS, seed=7).to_csv(self.customers, index=False)
        self.table = scores_table.location(self.env, None)

    def score(self, spark, scoring_date: str = "2026-12-01", version: str | None = "1", customers: Path | None = None,
              slot: str | None = None) -> batch.ScoreResult:
        request = scoring_request(scoring_date, version, slot, str(customers or self.customers))
        return batch.score_customers(spark, self.env, request)

    def partition(self, scoring_date: str) -> pd.DataFrame:
        return pd.read_parquet(scores_table.partition_location(self.table, scoring_date))

    def files(self, scoring_date: str) -> dict[str, bytes]:
        folder = Path(scores_table.partition_location(self.table, scoring_date))
        return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}

    def scoring_runs(self) -> list:
        import mlflow

        tracking.use_environment(self.env)
        return mlflow.search_runs(experiment_names=[contract.SCORING_EXPERIMENT], output_format="list")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> ScoringWorld:
    return ScoringWorld(tmp_path_factory.mktemp("scoring"))


@pytest.fixture(scope="module")
def scored(world, spark) -> batch.ScoreResult:
    """The customer table scored with version 1 for 2026-12-01."""
    return world.score(spark)


def in_process(world: ScoringWorld, version: str, rows: pd.DataFrame) -> pd.DataFrame:
    """The registered version's answer, loaded in this process like any pyfunc caller."""
    import mlflow

    tracking.use_environment(world.env)
    return mlflow.pyfunc.load_model(registry.model_uri(version)).predict(rows[list(contract.FEATURES)])


# --- the scores table ---------------------------------------------------------------------------------


def test_the_partition_holds_the_inputs_the_answer_and_the_lineage_of_every_customer(world, scored, spark):
    table = spark.read.parquet(world.table)
    assert table.columns == [*SCORES_COLUMNS, "scoring_date"]
    types = dict(table.dtypes)
    assert (types[contract.PROBABILITY], types[contract.DECISION], types["risk_decile"]) == ("double", "int", "int")
    assert (types["scored_at"], types["scoring_date"], types["Age"], types["Geography"]) == (
        "timestamp", "date", "bigint", "string")
    frame = world.partition("2026-12-01")
    source = pd.read_csv(world.customers)
    assert len(frame) == CUSTOMERS == scored.rows == scored.rows_scored and scored.rows_unscored == 0
    assert sorted(frame[contract.ID_COLUMN]) == sorted(source[contract.ID_COLUMN])
    build, run_id = world.runs["1"]
    assert set(frame.model_version) == {"1"} and set(frame.build) == {build} and set(frame.run_id) == {run_id}
    assert set(frame.scoring_run_id) == {scored.run_id} and frame.scored_at.nunique() == 1
    assert frame[contract.PROBABILITY].between(0, 1).all()
    assert (frame[contract.DECISION] == (frame[contract.PROBABILITY] >= THRESHOLD).astype(int)).all()
    joined = frame.merge(source, on=contract.ID_COLUMN, suffixes=("", "_source"))
    assert all((joined[name] == joined[f"{name}_source"]).all() for name in contract.FEATURES)  # the inference log
    assert scored.output == scores_table.partition_location(world.table, "2026-12-01")
    assert scored.table_format == "parquet" and scored.slot is None and scored.model_version == "1"


def test_risk_deciles_rank_the_customers_into_tenths(world, scored):
    frame = world.partition("2026-12-01")
    counts = frame.risk_decile.value_counts().sort_index()
    assert list(counts.index) == list(range(1, 11))
    assert counts.between(CUSTOMERS / 10 - 8, CUSTOMERS / 10 + 8).all()  # ties aside, a tenth each
    by_decile = frame.groupby("risk_decile")[contract.PROBABILITY]
    assert (by_decile.min().iloc[:-1].to_numpy() >= by_decile.max().iloc[1:].to_numpy()).all()  # 1 is the riskiest
    riskiest = [customer[contract.ID_COLUMN] for customer in scored.riskiest]
    expected = frame.sort_values([contract.PROBABILITY, contract.ID_COLUMN], ascending=[False, True])
    assert riskiest == list(expected[contract.ID_COLUMN].head(10))
    assert {customer["risk_decile"] for customer in scored.riskiest} == {1}


def test_batch_probabilities_are_the_in_process_models(world, scored):
    frame = world.partition("2026-12-01").sort_values(contract.ID_COLUMN).reset_index(drop=True)
    expected = in_process(world, "1", frame)
    assert (frame[contract.PROBABILITY] - expected[contract.PROBABILITY]).abs().max() < 1e-12
    assert (frame[contract.DECISION] == expected[contract.DECISION]).all()


@pytest.mark.slow
def test_batch_the_local_endpoint_and_the_model_in_process_give_the_same_probabilities(world, spark):
    """A real scoring server (MLflow's, behind the stage slot's router) answers what the batch job wrote."""
    from deploy.release.rollout import down, release
    from deploy.release.targets.local import LocalTarget

    try:
        released = release(world.env, "stage", "b-score-1")
        result = world.score(spark, "2026-12-09", version=None, slot="stage")
        rows = pd.read_csv(world.customers).head(25)
        served = LocalTarget(world.env).invoke_slot("stage", rows[list(contract.FEATURES)])
    finally:
        down(world.env)
    assert result.model_version == released.version == "1" and result.slot == "stage"
    batch_rows = world.partition("2026-12-09").set_index(contract.ID_COLUMN).loc[rows[contract.ID_COLUMN]]
    expected = in_process(world, "1", rows)
    assert [sorted(answer) for answer in served] == [[contract.DECISION, contract.PROBABILITY]] * len(rows)
    for served_answer, batch_probability, batch_decision, model_probability, model_decision in zip(
        served, batch_rows[contract.PROBABILITY], batch_rows[contract.DECISION],
        expected[contract.PROBABILITY], expected[contract.DECISION], strict=True,
    ):
        assert served_answer[contract.PROBABILITY] == pytest.approx(batch_probability, abs=1e-9)
        assert batch_probability == pytest.approx(model_probability, abs=1e-12)
        assert served_answer[contract.DECISION] == batch_decision == model_decision
    import mlflow

    assert mlflow.MlflowClient().get_run(result.run_id).data.tags["slot"] == "stage"


# --- lineage ------------------------------------------------------------------------------------------


def test_the_run_in_churn_scoring_records_what_was_scored_with_and_where_it_went(world, scored):
    import mlflow

    run = mlflow.MlflowClient().get_run(scored.run_id)
    build, model_run = world.runs["1"]
    assert run.info.status == "FINISHED"
    assert mlflow.get_experiment(run.info.experiment_id).name == "churn-scoring"
    tags = run.data.tags
    assert (tags["model_version"], tags["build"], tags["model_run_id"], tags["scoring_date"]) == (
        "1", build, model_run, "2026-12-01")
    assert "slot" not in tags  # scored by version
    assert tags["output"] == run.data.params["output"] == scored.output
    metrics = run.data.metrics
    assert (metrics["rows"], metrics["rows_scored"], metrics["rows_unscored"]) == (CUSTOMERS, CUSTOMERS, 0)
    assert metrics["nulls_Age"] == 0 and metrics["churners"] == scored.churners
    artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(scored.run_id)}
    assert {lineage.HISTOGRAM_ARTIFACT, lineage.SUMMARY_ARTIFACT} <= artifacts
    png = Path(mlflow.artifacts.download_artifacts(run_id=scored.run_id, artifact_path=lineage.HISTOGRAM_ARTIFACT))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = mlflow.artifacts.load_dict(f"runs:/{scored.run_id}/{lineage.SUMMARY_ARTIFACT}")
    assert sum(summary["histogram"]) == CUSTOMERS and len(summary["risk_decile_cuts"]) == 9


def test_latest_run_is_the_newest_scoring_run(world, scored):
    latest = lineage.latest_run(world.env)
    assert latest is not None and latest["scoring_date"] is not None
    newest = max(world.scoring_runs(), key=lambda run: run.info.start_time)
    assert latest["run_id"] == newest.info.run_id and latest["status"] == "FINISHED"


# --- re-runs and atomic replacement --------------------------------------------------------------------


def test_a_rerun_of_a_date_replaces_its_partition_and_leaves_other_dates_alone(world, spark):
    world.score(spark, "2026-11-30", version="1")
    other = world.files("2026-11-30")
    first = world.score(spark, "2026-12-02", version="1")
    again = world.score(spark, "2026-12-02", version="2")
    frame = world.partition("2026-12-02")
    assert len(frame) == CUSTOMERS and set(frame.model_version) == {"2"} and set(frame.scoring_run_id) == {again.run_id}
    replaced = pd.read_parquet(Path(world.table) / scores_table.REPLACED / "scoring_date=2026-12-02")
    assert set(replaced.scoring_run_id) == {first.run_id}  # kept until the date is replaced again
    assert world.files("2026-11-30") == other
    staging = Path(world.table) / scores_table.STAGING
    assert not list(staging.iterdir())  # nothing left beside the table


def test_readers_see_the_old_partition_or_the_new_one_never_a_mix(tmp_path):
    """The local swap is one rename: a reader listing the partition during many swaps sees a whole set."""
    live, staging = tmp_path / "scoring_date=2026-12-01", tmp_path / "next"
    sets = {}
    for name in ("old", "new"):
        folder = tmp_path / name
        folder.mkdir()
        for part in range(3):
            (folder / f"part-{part}-{name}.parquet").write_text(name)
        sets[name] = {f"part-{part}-{name}.parquet" for part in range(3)}
    os.rename(tmp_path / "old", live)
    os.rename(tmp_path / "new", staging)
    seen, stop = [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(frozenset(path.name for path in live.iterdir()))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(500):
            assert scores_table._exchange(staging, live)
    finally:
        stop.set()
        reader.join()
    assert seen and set(seen) <= {frozenset(sets["old"]), frozenset(sets["new"])}


def test_the_delta_table_replaces_the_date_with_replace_where(spark):
    """On Databricks: one Delta commit per date (the local session has no Delta; the writer's calls are checked)."""
    from pyspark.sql import DataFrameWriter

    writer = create_autospec(DataFrameWriter, instance=True)
    for method in ("format", "mode", "option", "partitionBy"):
        getattr(writer, method).return_value = writer
    frame = spark.createDataFrame([(1, 0.5)], "CustomerId long, churn_probability double")
    with patch("pyspark.sql.DataFrame.write", new_callable=PropertyMock, return_value=writer):
        where = scores_table.replace_partition(frame, "abfss://churndata@acct.dfs.core.windows.net/scores",
                                               "2026-12-01", delta=True)
    writer.format.assert_called_once_with("delta")
    writer.mode.assert_called_once_with("overwrite")
    writer.option.assert_called_once_with("replaceWhere", "scoring_date = '2026-12-01'")
    writer.partitionBy.assert_called_once_with("scoring_date")
    writer.save.assert_called_once_with("abfss://churndata@acct.dfs.core.windows.net/scores")
    assert where == "abfss://churndata@acct.dfs.core.windows.net/scores/scoring_date=2026-12-01"


# --- bad input ----------------------------------------------------------------------------------------


def broken_tables(folder: Path) -> dict[str, tuple[Path, str]]:
    source = synthetic.generate(60, seed=3)
    cases = {}
    missing = folder / "missing.csv"
    source.drop(columns=["Tenure"]).to_csv(missing, index=False)
    cases["missing-column"] = (missing, r"lacks column Tenure; expected columns CustomerId, Geography")
    text = folder / "text-in-age.csv"
    source.astype({"Age": object}).assign(Age=lambda table: table.Age.where(table.index != 4, "forty")).to_csv(
        text, index=False)
    customer = source.CustomerId.iloc[4]
    cases["text-in-age"] = (text, rf"column Age holds 'forty' \(CustomerId {customer}\) \(1 row .*expected a whole")
    fraction = folder / "fraction.csv"
    source.astype({"NumOfProducts": object}).assign(
        NumOfProducts=lambda table: table.NumOfProducts.where(table.index > 1, 2.5)).to_csv(fraction, index=False)
    cases["fraction-in-products"] = (
        fraction, r"column NumOfProducts holds '2.5' \(CustomerId \d+\), '2.5' \(CustomerId \d+\) \(2 rows")
    empty = folder / "empty.csv"
    empty.write_text("")
    cases["empty-file"] = (empty, r"empty.csv is empty; expected a header")
    header = folder / "header-only.csv"
    source.head(0).to_csv(header, index=False)
    cases["header-only"] = (header, r"has a header but no rows")
    cases["absent"] = (folder / "absent.csv", r"absent.csv not found")
    return cases


@pytest.mark.parametrize(
    "case", ["missing-column", "text-in-age", "fraction-in-products", "empty-file", "header-only", "absent"]
)
def test_a_bad_table_is_one_line_and_leaves_the_previous_scores_untouched(world, scored, spark, tmp_path, case):
    before, runs = world.files("2026-12-01"), len(world.scoring_runs())
    path, message = broken_tables(tmp_path)[case]
    with pytest.raises(UsageError, match=message) as refused:
        world.score(spark, "2026-12-01", customers=path)
    assert "\n" not in str(refused.value) and str(path) in str(refused.value)
    assert world.files("2026-12-01") == before and len(world.scoring_runs()) == runs
    assert not list((Path(world.table) / scores_table.STAGING).iterdir())


def test_a_parquet_table_with_a_wrong_column_type_is_refused(world, spark, tmp_path):
    source = synthetic.generate(30, seed=4)
    typed = tmp_path / "typed.parquet"
    source.to_parquet(typed)
    result = world.score(spark, "2026-12-05", customers=typed)  # a Parquet table of the right types scores
    assert result.rows == 30 and result.rows_scored == 30
    wrong = tmp_path / "wrong.parquet"
    source.assign(Geography=1).to_parquet(wrong)
    with pytest.raises(UsageError, match=r"column Geography has type bigint; expected text"):
        world.score(spark, "2026-12-05", customers=wrong)
    text = tmp_path / "text.parquet"
    source.astype({"Age": str}).assign(Age=lambda table: table.Age.where(table.index != 2, "old")).to_parquet(text)
    with pytest.raises(UsageError, match=r"column Age holds 'old' \(CustomerId \d+\) \(1 row\); expected a whole"):
        world.score(spark, "2026-12-05", customers=text)


def test_rows_with_an_empty_feature_are_counted_and_left_unscored(world, spark, tmp_path):
    source = synthetic.generate(50, seed=5).astype({"Age": "Int64"})
    source.loc[[1, 2], "Age"] = pd.NA
    source.loc[2, "Geography"] = None
    source.loc[3, "Balance"] = None
    path = tmp_path / "gaps.csv"
    source.to_csv(path, index=False)
    result = world.score(spark, "2026-12-06", customers=path)
    assert (result.rows, result.rows_scored, result.rows_unscored) == (50, 47, 3)
    assert (result.nulls["Age"], result.nulls["Geography"], result.nulls["Balance"]) == (2, 1, 1)
    frame = world.partition("2026-12-06").set_index(contract.ID_COLUMN)
    gaps = source.CustomerId.iloc[[1, 2, 3]]
    assert frame.loc[gaps, [contract.PROBABILITY, contract.DECISION, "risk_decile"]].isna().all().all()
    assert frame.drop(index=gaps)[contract.PROBABILITY].notna().all()
    import mlflow

    metrics = mlflow.MlflowClient().get_run(result.run_id).data.metrics
    assert (metrics["rows_unscored"], metrics["nulls_Age"], metrics["nulls_Balance"]) == (3, 2, 1)


# --- which version ------------------------------------------------------------------------------------


def test_the_version_comes_from_the_slot_or_is_refused_clearly(world, spark):
    with pytest.raises(UsageError, match=r"slot prod \(churnservice-prod\) serves no model version; release one"):
        world.score(spark, version=None, slot="prod")
    with pytest.raises(UsageError, match=r"model churn-model has no version 9; expected a registered version"):
        world.score(spark, version="9")
    for bad, message in (("2026-02-30", "not a calendar date"), ("1.12.2026", "expected YYYY-MM-DD")):
        with pytest.raises(UsageError, match=message):
            scoring_request(bad)
    with pytest.raises(UsageError, match="model version 'v3' is invalid"):
        scoring_request(version="v3")


def test_a_model_from_before_the_scoring_contract_is_refused(world, spark):
    """A version that answers labels (logged with the scikit-learn flavor) cannot fill the scores table."""
    import tempfile

    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    tracking.use_environment(world.env)
    table = synthetic.generate(40, seed=9)
    numeric = table[["Age", "Balance"]]
    fitted = LogisticRegression().fit(numeric, table[contract.LABEL])
    with mlflow.start_run(experiment_id=tracking.ensure_experiment(world.env)) as run, \
            tempfile.TemporaryDirectory() as folder:
        mlflow.sklearn.save_model(fitted, Path(folder) / "model",
                                  signature=infer_signature(numeric, fitted.predict(numeric)))
        mlflow.log_artifacts(str(Path(folder) / "model"), artifact_path="model")
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", contract.REGISTERED_MODEL).version
    with pytest.raises(UsageError, match=rf"model version {version} answers .*predates the scoring contract"):
        world.score(spark, version=str(version))


# --- on Databricks: the session reads the data container as the automation identity -------------------


def test_the_notebook_gives_spark_the_identity_for_the_data_account(spark, local_config):
    from deploy import notebook_runtime
    from deploy.platform.outputs import OUTPUT_NAMES, StackOutputs

    env = load_environment("dev", local_config)
    values = {name: f"test-{name}" for name in OUTPUT_NAMES}
    values.update(data_account="chrndevdata", tenant_id="11111111-1111-1111-1111-111111111111")
    outputs = StackOutputs(**values)
    secrets = {(notebook_runtime.SECRET_SCOPE, outputs.client_secret_name): "from-key-vault"}
    host = "chrndevdata.dfs.core.windows.net"
    try:
        notebook_runtime.spark_reads_data_container(notebook_runtime.local_dbutils({}, secrets=secrets), spark, env,
                                                    outputs)
        assert spark.conf.get(f"fs.azure.account.auth.type.{host}") == "OAuth"
        assert spark.conf.get(f"fs.azure.account.oauth2.client.id.{host}") == outputs.automation_client_id
        assert spark.conf.get(f"fs.azure.account.oauth2.client.secret.{host}") == "from-key-vault"
        assert spark.conf.get(f"fs.azure.account.oauth2.client.endpoint.{host}") == (
            "https://login.microsoftonline.com/11111111-1111-1111-1111-111111111111/oauth2/token")
    finally:
        for key in ("auth.type", "oauth.provider.type", "oauth2.client.id", "oauth2.client.secret",
                    "oauth2.client.endpoint"):
            spark.conf.unset(f"fs.azure.account.{key}.{host}")
