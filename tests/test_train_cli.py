"""`python -m deploy train --env local` through `deploy.cli.main`: the notebook in-process, --json, exit codes."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pandas as pd
import pytest

from config import load_environment
from deploy.cli import main
from deploy.core import contract
from deploy.platform import tracking
from deploy.training import synthetic

ROWS = 2_000
EXAMPLE_REQUEST = Path(__file__).resolve().parent.parent / "examples" / "score-request.json"
EXAMPLE_RESPONSE = EXAMPLE_REQUEST.with_name("score-response.json")


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "churn.csv"
    synthetic.generate(ROWS).to_csv(path, index=False)
    return path


@pytest.fixture
def train(local_config):
    def run(*arguments: str) -> int:
        return main(["train", "--env", "local", "--config", str(local_config), *arguments])

    return run


def runs_of(local_config: Path, build: str) -> list:
    import mlflow

    tracking.use_environment(load_environment("local", local_config))
    return mlflow.search_runs(
        experiment_names=[contract.EXPERIMENT], filter_string=f"tags.buildnumber = '{build}'", output_format="list"
    )


def test_json_is_one_object_on_stdout_with_the_run_and_its_metrics(train, data, local_config, capsys):
    assert train("--build", "20261126.7", "--source", "repo@beef", "--data", str(data), "--json") == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)  # nothing but the one object: the notebook's prints went to stderr
    assert document["build"] == "20261126.7" and document["source"] == "repo@beef"
    assert document["experiment"] == "automl-churn" and document["environment"] == "local"
    assert 0.5 < document["metrics"]["auc"] <= 1.0 and document["reused"] is False
    (run,) = runs_of(local_config, "20261126.7")
    assert run.info.run_id == document["run_id"] and run.data.tags["buildsource"] == "repo@beef"
    assert "logged run" in captured.err and "searched 8 candidates" in captured.err


def test_a_second_train_of_a_build_reports_its_run_and_force_retrains(train, data, local_config, capsys):
    assert train("--build", "b-twice", "--data", str(data), "--json") == 0
    first = json.loads(capsys.readouterr().out)
    assert train("--build", "b-twice", "--data", str(data), "--json") == 0
    second = json.loads(capsys.readouterr().out)
    assert second["reused"] is True and second["run_id"] == first["run_id"]
    assert train("--build", "b-twice", "--data", str(data), "--force", "--json") == 0
    third = json.loads(capsys.readouterr().out)
    assert third["reused"] is False and third["run_id"] != first["run_id"]
    assert [run.info.run_id for run in runs_of(local_config, "b-twice")] == [third["run_id"]]


def test_defaults_a_generated_build_the_manual_source_and_the_synthetic_table(train, local_config, monkeypatch, capsys):
    monkeypatch.setattr(synthetic, "DEFAULT_ROWS", ROWS)  # the real default is 10,000 rows: slower, same path
    assert train() == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("build ") and "auc " in captured.out  # the human summary, with its metrics
    build = captured.out.split()[1].rstrip(":")
    assert uuid.UUID(build).version == 4
    (run,) = runs_of(local_config, build)
    assert run.data.tags["buildsource"] == "manual"
    table = tracking.local_data_root(load_environment("local", local_config)) / contract.SOURCE_DATA_PATH
    assert tuple(pd.read_csv(table).columns) == contract.COLUMNS
    assert run.data.params["source_data"] == str(table)


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("RowNumber,CreditScore\n1,600\n", "lacks column Geography"),
        (None, "column Age holds 'forty-two' on line 2"),
        ("", "is empty"),
    ],
    ids=["missing-column", "text-in-age", "empty-file"],
)
def test_a_bad_csv_exits_2_with_one_line_and_trains_nothing(train, local_config, tmp_path, capsys, content, named):
    path = tmp_path / "bad.csv"
    if content is None:
        table = synthetic.generate(40).astype({"Age": object})
        table.loc[0, "Age"] = "forty-two"
        table.to_csv(path, index=False)
    else:
        path.write_text(content)
    assert train("--build", "b-bad", "--data", str(path), "--json") == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and named in errors[0] and "Traceback" not in captured.err
    # With --json the failure is also one JSON object on stdout, for the pipeline step that reads it.
    assert json.loads(captured.out) == {"error": errors[0].removeprefix("error: "), "kind": "usage", "exit_status": 2}
    assert runs_of(local_config, "b-bad") == []
    assert not (tracking.local_data_root(load_environment("local", local_config)) / "runs" / "b-bad").exists()


def test_bad_flags_exit_2(train, tmp_path, capsys):
    assert train("--build", "../escape") == 2
    assert "build id '../escape' is invalid" in capsys.readouterr().err
    assert train("--build", "b-x", "--data", str(tmp_path / "absent.csv")) == 2
    assert "absent.csv not found" in capsys.readouterr().err


def test_the_example_request_scores_against_a_trained_model(train, data, local_config, capsys):
    import mlflow

    assert train("--build", "b-example", "--data", str(data), "--json") == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    request = json.loads(EXAMPLE_REQUEST.read_text())["dataframe_split"]
    assert request["columns"] == list(contract.FEATURES) and len(request["data"]) == 2
    customers = pd.DataFrame(request["data"], columns=request["columns"])
    uri = f"runs:/{run_id}/{contract.MODEL_ARTIFACT_PATH}"
    answer = mlflow.pyfunc.load_model(uri).predict(customers)  # passes the model's schema enforcement
    assert list(answer.columns) == [contract.PROBABILITY, contract.DECISION] and len(answer) == 2
    churn, stay = answer[contract.PROBABILITY]
    assert churn > stay  # the first customer is the likely churner, as the demo says
    example = json.loads(EXAMPLE_RESPONSE.read_text())["predictions"]  # the answer the README shows
    assert [sorted(record) for record in example] == [sorted(answer.columns)] * 2
