"""`monitor` locally: drift, data quality, health and realized quality over a real MLflow store and request log.

The slot's truth is the real LocalTarget reading the slot's state file; the request log, the batch
scores and the outcomes are written in the formats the router, the scoring job and the business use.
The thresholds are the shipped defaults; the drifted and fresh samples come from fixed seeds, and the
assertions keep a margin from each threshold, so nothing here is flaky.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from config import Monitoring, load_environment
from deploy.cli import main
from deploy.core.errors import Refused, UsageError
from deploy.monitoring import drift, request_log
from deploy.monitoring.health import RequestHealth
from deploy.monitoring.run import EXPERIMENT, run_monitor
from deploy.monitoring.window import parse_window
from deploy.platform import tracking
from deploy.training import synthetic
from tests.monitoring_fixtures import (
    NOW,
    fitted,
    logged_request,
    reference_and_current,
    serve,
    traffic,
    write_log,
    write_scores,
)

THRESHOLDS = Monitoring()
REFERENCE = synthetic.generate(8000, 11)  # what reference_and_current() trains on


@pytest.fixture
def env(local_config: Path):
    return load_environment("local", local_config)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A local store where prod serves build b-ref (a bare-label model on REFERENCE), made once per module:
    an MLflow store's first set-up and a logged, registered model cost seconds each."""
    from tests.conftest import SHIPPED_CONFIG

    folder = tmp_path_factory.mktemp("served")
    config = folder / "environments.toml"
    text = SHIPPED_CONFIG.read_text().replace('state_dir = ".state/local"', f'state_dir = "{folder / "state"}"')
    config.write_text(text)
    version = serve(load_environment("local", config), "b-ref", REFERENCE)
    return folder / "state", version


@pytest.fixture
def served(env, template) -> str:
    """`env` with the template's store (prod serves b-ref); returns the served version. The registered model's
    files stay in the template's folder, which the copied store points at."""
    shutil.copytree(template[0], env.local.state_dir)
    return template[1]


def profiles(reference: pd.DataFrame, current: pd.DataFrame, chunk: int = 700) -> drift.FeatureProfiles:
    found = drift.FeatureProfiles(reference)
    for start in range(0, len(current), chunk):
        found.add(current.iloc[start:start + chunk])
    return found


# --- the statistics -----------------------------------------------------------------------------


def test_a_fresh_sample_of_the_reference_distribution_does_not_drift():
    reference, fresh = reference_and_current(rows=3000, drift=0.0)
    found = profiles(reference, fresh)
    judged = found.drift(THRESHOLDS)
    assert {entry["status"] for entry in judged.values()} == {drift.OK}
    # a margin: every distance below half the threshold
    assert max(entry["value"] for entry in judged.values()) < THRESHOLDS.drift_distance / 2
    assert {entry["status"] for entry in found.quality(THRESHOLDS).values()} == {drift.OK}


def test_the_drifted_customer_base_drifts_where_it_moved_and_nowhere_else():
    reference, drifted = reference_and_current(rows=3000, drift=1.0)
    judged = profiles(reference, drifted).drift(THRESHOLDS)
    assert {name for name, entry in judged.items() if entry["status"] == drift.CROSSED} == {"Geography", "Age"}
    assert judged["Geography"]["value"] > 3 * THRESHOLDS.drift_distance  # far beyond, not at the edge
    assert judged["Age"]["value"] > 3 * THRESHOLDS.drift_distance
    assert (judged["Geography"]["statistic"], judged["Geography"]["test"]) == ("jensen_shannon", "chi2_contingency")
    assert (judged["Age"]["statistic"], judged["Age"]["test"]) == ("jensen_shannon", "ks_2samp")
    assert judged["Age"]["p_value"] < 1e-20


def test_the_new_market_is_an_unseen_category_and_older_ages_leave_the_training_range():
    reference, drifted = reference_and_current(rows=3000, drift=1.0)
    quality = profiles(reference, drifted).quality(THRESHOLDS)
    assert quality["Geography"]["status"] == drift.CROSSED and quality["Geography"]["crossed"] == ["unseen_share"]
    assert list(quality["Geography"]["unseen"]) == [synthetic.NEW_MARKET]
    assert 0.25 < quality["Geography"]["unseen_share"] < 0.42
    assert quality["Age"]["out_of_range_share"] >= 0  # ages are clipped at 92, so the range holds


def test_few_rows_are_not_enough_data_never_no_drift():
    reference, few = reference_and_current(rows=THRESHOLDS.min_rows - 1, drift=1.0)
    found = profiles(reference, few)
    assert {entry["status"] for entry in found.drift(THRESHOLDS).values()} == {drift.NOT_ENOUGH_DATA}
    assert {entry["status"] for entry in found.quality(THRESHOLDS).values()} == {drift.NOT_ENOUGH_DATA}


def test_on_few_rows_the_distance_alone_would_flag_noise_and_the_test_holds_it_back():
    """Why drift needs both: 200 undrifted rows put some distances above 0.1, with unremarkable p-values."""
    reference = synthetic.generate(8000, 11)
    fresh = synthetic.generate(200, 3)
    judged = profiles(reference, fresh).drift(THRESHOLDS)
    noisy = [name for name, entry in judged.items() if entry["value"] > THRESHOLDS.drift_distance]
    assert noisy and all(judged[name]["p_value"] > THRESHOLDS.drift_p_value for name in noisy)
    assert {entry["status"] for entry in judged.values()} == {drift.OK}


def test_chunking_does_not_change_the_counts_and_memory_follows_the_sample_bound():
    reference, current = reference_and_current(rows=12_000, drift=1.0)
    whole, chunked = profiles(reference, current, chunk=12_000), profiles(reference, current, chunk=333)
    for name in ("Age", "Geography", "Balance"):
        assert whole.drift(THRESHOLDS)[name]["current_bins"] == chunked.drift(THRESHOLDS)[name]["current_bins"]
    assert len(chunked.profiles["Age"].sample) == drift.SAMPLE_SIZE


def test_prediction_drift_needs_probabilities_and_compares_them_with_the_models_own_on_its_training_split():
    reference, drifted = reference_and_current(rows=3000, drift=1.0)
    _, fresh = reference_and_current(rows=3000, drift=0.0)
    model = fitted(reference)
    scores = lambda rows: model.predict_proba(rows[list(synthetic.COLUMNS[3:13])])[:, 1]  # noqa: E731
    moved = drift.PredictionProfile(lambda: scores(reference))
    moved.add(scores(drifted))
    steady = drift.PredictionProfile(lambda: scores(reference))
    steady.add(scores(fresh))
    assert moved.drift(THRESHOLDS)["status"] == drift.CROSSED
    assert steady.drift(THRESHOLDS)["status"] == drift.OK

    def never() -> None:
        raise AssertionError("the model is loaded only when there are probabilities to compare")

    labels_only = drift.PredictionProfile(never)
    labels_only.add([], labels_only=3000)
    judged = labels_only.drift(THRESHOLDS)
    assert judged["status"] == drift.UNAVAILABLE and "answers labels" in judged["reason"]
    assert drift.PredictionProfile(never).drift(THRESHOLDS)["status"] == drift.NOT_ENOUGH_DATA


# --- the window ---------------------------------------------------------------------------------


def test_windows_in_days_and_hours():
    assert parse_window("7d", NOW).start == NOW - timedelta(days=7)
    assert parse_window("36h", NOW).start == NOW - timedelta(hours=36)
    assert parse_window("1d", NOW).first_date.isoformat() == "2026-11-30"


@pytest.mark.parametrize("text", ["7", "d", "0d", "7w", "7 d", "-1d", "1.5d", "99999d", "", "7d\n"])
def test_a_bad_window_is_one_line_and_exit_2(text, local_config, capsys):
    with pytest.raises(UsageError, match="expected a number of days or hours"):
        parse_window(text, NOW)
    assert main(["monitor", "--env", "local", "--config", str(local_config), f"--window={text}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--window" in err


# --- the request log ----------------------------------------------------------------------------


def test_the_log_is_read_across_its_rotated_files_oldest_first_and_failures_count(env):
    customers = synthetic.generate(300, 5)
    requests = traffic(env, "1", customers, batch=10)  # 30 requests
    requests[3] = logged_request(customers.iloc[30:40], datetime.fromisoformat(requests[3]["time"]), "1", status=500)
    requests.append(logged_request(customers.iloc[:1], NOW - timedelta(days=3), "1"))  # outside a 1d window
    paths = write_log(env, requests, per_file=7)
    paths[0].write_text(paths[0].read_text() + '{"time": "2026-12-01T11:00:00+00:00", "slot": "pr')  # cut short
    files = request_log.log_files(env.local.state_dir, "prod")
    assert [path.name for path in files] == [f"prod.jsonl.{n}" for n in (4, 3, 2, 1)] + ["prod.jsonl"]

    reading, health = request_log.LogReading(), RequestHealth()
    seen = []
    for batch in request_log.read_requests(files, parse_window("1d", NOW), reading, batch_rows=40):
        assert len(batch) <= 4 and batch.requests["rows"].sum() <= 40 and len(batch.inputs) <= 40
        health.add(batch.requests)
        seen.extend(batch.requests["time"])
    assert (reading.files, reading.lines, reading.unreadable_lines, reading.outside_window) == (5, 32, 1, 1)
    assert seen == sorted(seen) and len(seen) == 30
    assert (health.requests, health.failed, health.server_errors, health.rows) == (30, 1, 1, 300)
    assert health.errors == {"INTERNAL_ERROR": 1}
    assert 11.0 < health.percentile(0.95) < 13.0  # every request took 12 ms; bins are 2.7% wide


def test_the_columnar_and_the_line_by_line_reader_give_the_same_batches(env):
    """pyarrow reads chunks of well-formed lines; a chunk it refuses goes line by line: both agree."""
    customers = synthetic.generate(600, 6)
    chances = np.random.default_rng(6).random(len(customers))
    requests = traffic(env, "2", customers, batch=20, probabilities=lambda rows: chances[rows.index])  # 30 requests
    requests[4] = logged_request(customers.iloc[80:100], datetime.fromisoformat(requests[4]["time"]), "2",
                                 status=503)
    requests[7]["inputs"][3]["Surname"] = "Hargrave"  # a key the model does not take: ignored by both
    del requests[8]["inputs"][0]["Age"]  # a key missing: a null for both
    requests[9]["version"] = "1"  # another version's answers: not this version's probabilities
    requests.append(logged_request(customers.iloc[:5], NOW - timedelta(days=2), "2",
                                   answers=[{"churn_probability": 0.5, "churn": 1}] * 5))  # outside the window
    write_log(env, requests)
    files = request_log.log_files(env.local.state_dir, "prod")

    def read(columnar: bool, chunk_bytes: int) -> tuple[Any, ...]:
        reading, health = request_log.LogReading(), RequestHealth()
        batches = list(request_log.read_requests(files, parse_window("1d", NOW), reading, batch_rows=100,
                                                 chunk_bytes=chunk_bytes, columnar=columnar))
        for batch in batches:
            health.add(batch.requests)
        inputs = pd.concat([batch.inputs for batch in batches], ignore_index=True)
        found, labels = zip(*(request_log.probabilities(batch, "2") for batch in batches), strict=True)
        return (reading, (health.requests, health.failed, health.server_errors, health.rows, health.errors),
                health.percentile(0.95), [len(batch) for batch in batches], inputs, np.concatenate(found),
                sum(labels))

    columnar, exact = read(True, 2**20), read(False, 2**20)
    assert columnar[0] == exact[0] == request_log.LogReading(files=1, lines=31, outside_window=1)
    assert request_log._columns(files[0].read_bytes()) is not None  # pyarrow took this log whole
    assert columnar[1] == exact[1] == (30, 1, 1, 600, {"INTERNAL_ERROR": 1})
    assert columnar[2:4] == exact[2:4] and exact[3] == [5, 5, 5, 5, 5, 5]  # 100 customers a batch
    pd.testing.assert_frame_equal(columnar[4].astype({"Age": float}), exact[4].astype({"Age": float}),
                                  check_dtype=False)
    assert len(columnar[4]) == 600 and columnar[4]["Age"].isna().sum() == 1
    np.testing.assert_allclose(columnar[5], exact[5])
    assert len(exact[5]) == 600 - 20 - 20 and columnar[6] == exact[6] == 0  # less the failed and version 1

    # A chunk with a line cut short is read line by line, the chunks before and after it by pyarrow; a
    # blank line and one with a bare carriage return inside are one unreadable line each, to both readers.
    with files[0].open("a", newline="") as log:
        log.write(f'\nnot json\r{json.dumps(requests[0])}\n{{"time": "2026-12-01T11:00:00+00:00", "inputs": [{{"Ag')
    for reader in (read(True, 4096), read(False, 4096)):
        assert reader[0] == request_log.LogReading(files=1, lines=34, unreadable_lines=3, outside_window=1)
        assert reader[1] == exact[1] and len(reader[4]) == 600


# --- monitor, end to end ------------------------------------------------------------------------


def test_monitor_flags_the_drifted_traffic_records_a_run_with_its_report_and_exits_3(env, served, local_config, capsys):
    _, drifted = reference_and_current(rows=2000, drift=1.0)
    version = served
    write_log(env, traffic(env, version, drifted, now=pd.Timestamp.now(tz="UTC").to_pydatetime()), per_file=15)

    status = main(["monitor", "--env", "local", "--config", str(local_config), "--window", "1d", "--json"])
    out = capsys.readouterr().out
    document = json.loads(out)
    assert status == 3
    assert document["verdict"] == "crossed" and document["version"] == version and document["build"] == "b-ref"
    assert {"features:Geography", "features:Age", "quality:Geography"} <= set(document["crossed"])
    assert document["retrain_wanted"] and document["retrain"]["build"].startswith("monitor-")
    assert document["retrain"]["started"] is False and "--retrain" in document["retrain"]["message"]
    assert document["signals"]["predictions"]["status"] == drift.UNAVAILABLE  # a bare-label model
    assert document["signals"]["realized"]["status"] == "no outcomes yet"
    assert document["signals"]["health"]["status"] == drift.OK and document["rows"]["online"] == 2000

    import mlflow

    tracking.use_environment(env)
    (run,) = mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list")
    assert run.info.run_id == document["run_id"]
    assert {key: run.data.tags[key] for key in ("environment", "slot", "version", "window", "verdict")} == {
        "environment": "local", "slot": "prod", "version": version, "window": "1d", "verdict": "crossed"}
    age = document["signals"]["features"]["Age"]
    assert run.data.metrics["drift.Age.jensen_shannon"] == pytest.approx(age["value"])
    assert run.data.metrics["quality.Geography.unseen_share"] > 0.25
    artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"report.html", "summary.json", "charts"} <= artifacts
    charts = {item.path for item in mlflow.MlflowClient().list_artifacts(run.info.run_id, "charts")}
    assert charts == {"charts/distributions.png", "charts/Age.png", "charts/Geography.png"}  # all, and each drifted
    report = Path(document["report"])
    assert report.is_file() and "data:image/png;base64," in report.read_text()

    summary = main(["monitor", "--env", "local", "--config", str(local_config), "--window", "1d"])
    text = capsys.readouterr().out
    assert summary == 3 and "verdict: CROSSED" in text
    shown = next(line for line in text.splitlines() if line.startswith("report: ")).removeprefix("report: ")
    assert shown.endswith("/artifacts/report.html") and Path(shown).is_file()
    assert len(text.splitlines()) <= 24  # one screen


def test_status_shows_each_slots_latest_monitoring_verdict(env, served):
    from deploy.status import collect, render

    _, fresh = reference_and_current(rows=600)
    version = served
    write_log(env, traffic(env, version, fresh, now=NOW))
    result = run_monitor(env, "prod", "1d", now=NOW)
    assert result.verdict == "ok"
    document = collect(env)
    assert document["slots"]["prod"]["monitoring"]["verdict"] == "ok"
    assert document["slots"]["stage"]["monitoring"] is None
    assert "  monitoring: ok (-) for version 1 over 1d at " in render(document)


def test_an_empty_log_is_not_enough_data_and_exits_0(env, served, local_config, capsys):
    write_log(env, [])
    assert main(["monitor", "--env", "local", "--config", str(local_config)]) == 0
    text = capsys.readouterr().out
    assert "verdict: OK" in text and "Age              not enough data (0 rows)" in text
    assert "slot health: not enough data (0 requests)" in text
    assert "realized quality: no outcomes yet (no outcomes table at " in text


def test_nothing_serving_is_one_line_and_exit_1(env, local_config, capsys):
    assert main(["monitor", "--env", "local", "--config", str(local_config)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "serves no model version; nothing to monitor" in err


def test_a_missing_training_split_is_refused_with_one_line(env, served):
    (tracking.local_data_root(env) / "runs" / "b-ref" / "train.csv").unlink()
    with pytest.raises(Refused, match=f"training split of build b-ref \\(model version {served}\\) is missing"):
        run_monitor(env, "prod", "7d", now=NOW)


def test_prediction_drift_from_the_logged_answers_of_a_probability_model(env):
    reference, drifted = reference_and_current(rows=2000, drift=1.0)
    version = serve(env, "b-proba", reference, probabilities=True)
    model = fitted(reference)
    write_log(env, traffic(env, version, drifted, probabilities=lambda rows: model.predict_proba(rows)[:, 1]))
    result = run_monitor(env, "prod", "1d", now=NOW)
    assert result.signals["predictions"]["status"] == drift.CROSSED
    assert result.signals["predictions"]["rows"] == 2000 and "predictions" in result.crossed


# --- batch scores and realized quality ----------------------------------------------------------


def test_batch_scores_count_as_current_rows_and_realized_auc_joins_outcomes_to_past_scores(env, served):
    version = served
    model = fitted(REFERENCE)
    old = synthetic.generate(3000, 21)  # scored 2026-10-01; its outcomes arrived since
    recent = synthetic.generate(1500, 22)  # scored in the window; no outcome yet
    # Scores that knew a lot: the label blurred by noise (an AUC well above the gate's 0.80).
    knowing = 0.6 * old["Exited"].to_numpy() + 0.4 * np.random.default_rng(1).random(len(old))
    write_scores(env, "2026-10-01", old, knowing, version)
    write_scores(env, "2026-11-30", recent, model.predict_proba(recent)[:, 1], version)
    outcomes = pd.DataFrame({"CustomerId": old["CustomerId"], "Exited": old["Exited"], "as_of": "2026-11-15"})
    outcomes = pd.concat([outcomes, pd.DataFrame({"CustomerId": [1], "Exited": [1], "as_of": ["2026-01-01"]})])
    folder = tracking.local_data_root(env) / "outcomes"
    folder.mkdir(parents=True)
    outcomes.iloc[:1000].to_csv(folder / "2026-11-a.csv", index=False)
    outcomes.iloc[1000:].to_parquet(folder / "2026-11-b.parquet", index=False)

    result = run_monitor(env, "prod", "7d", now=NOW)

    assert result.rows["batch"] == 1500 and result.rows["scoring_dates"] == ["2026-11-30"]
    assert result.signals["features"]["Age"]["status"] == drift.OK
    realized = result.signals["realized"]
    from sklearn.metrics import roc_auc_score

    expected = roc_auc_score(old["Exited"], knowing)
    assert realized["dates"]["2026-10-01"]["auc"] == pytest.approx(expected)
    assert realized["dates"]["2026-10-01"]["with_outcome"] == 3000
    assert realized["dates"]["2026-11-30"]["status"] == drift.NOT_ENOUGH_DATA  # outcomes are from before it
    assert (realized["status"], realized["scoring_date"]) == (drift.OK, "2026-10-01")
    assert realized["value"] > env.gate.min_auc


def test_realized_quality_below_the_gate_minimum_crosses(env, served):
    version = served
    old = synthetic.generate(2000, 31)
    noise = np.random.default_rng(0).random(len(old))  # scores that know nothing: AUC about 0.5
    write_scores(env, "2026-10-01", old, noise, version)
    folder = tracking.local_data_root(env) / "outcomes"
    folder.mkdir(parents=True)
    old.assign(as_of="2026-11-01")[["CustomerId", "Exited", "as_of"]].to_csv(folder / "outcomes.csv", index=False)
    result = run_monitor(env, "prod", "7d", now=NOW)
    assert result.signals["realized"]["status"] == drift.CROSSED and result.signals["realized"]["value"] < 0.6
    assert "realized" in result.crossed and result.retrain_wanted


def test_an_outcomes_table_without_its_columns_is_reported_not_a_crash(env, served):
    folder = tracking.local_data_root(env) / "outcomes"
    folder.mkdir(parents=True)
    (folder / "outcomes.csv").write_text("CustomerId,Churned\n1,0\n")
    result = run_monitor(env, "prod", "7d", now=NOW)
    assert result.signals["realized"]["status"] == drift.UNAVAILABLE
    assert "lacks column Exited" in result.signals["realized"]["reason"]


# --- retraining, locally --------------------------------------------------------------------------


@pytest.mark.slow
def test_retrain_trains_the_days_build_locally_and_releases_nothing(env, served, local_config, capsys):
    _, drifted = reference_and_current(rows=1000, drift=1.0)
    write_log(env, traffic(env, "1", drifted, now=pd.Timestamp.now(tz="UTC").to_pydatetime()))
    synthetic.write_if_missing(tracking.local_data_root(env) / "Churn_Modelling.csv", rows=2000)
    assert main(["monitor", "--env", "local", "--config", str(local_config), "--retrain", "--json"]) == 3
    document = json.loads(capsys.readouterr().out)
    build = document["retrain"]["build"]
    assert document["retrain"]["started"] and build == f"monitor-{pd.Timestamp.now(tz='UTC'):%Y%m%d}"
    from deploy.release import registry

    assert registry.finished_runs(build)  # trained...
    assert json.loads((env.local.state_dir / "serving" / "prod.json").read_text())["traffic"] == {"churn-v1": 100}
