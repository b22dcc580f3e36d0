"""`python -m deploy score` through `deploy.cli.main`: the notebook in process locally, the `churn-score` job on
Azure (the real databricks-sdk client against the fake Jobs API), exit codes, --json, and `status`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from config import load_environment
from deploy.cli import main
from deploy.core import contract
from deploy.platform import jobs
from deploy.platform import outputs as stack_outputs
from deploy.release import registry
from deploy.training import synthetic
from tests.conftest import local_config_text
from tests.fakes_databricks import FakeJobsApi, fails
from tests.rollout_fixtures import log_build
from tests.test_jobs import entra_credential

SCORED = {
    "environment": "dev", "scoring_date": "2026-12-01", "model_version": "4", "build": "20261130.2",
    "model_run_id": "mlflow-train-run", "slot": "prod", "run_id": "mlflow-scoring-run", "rows": 10000,
    "rows_scored": 10000, "rows_unscored": 0, "churners": 2100, "output": "abfss://churndata@a/scores/x",
    "riskiest": [],
}
DOCUMENT_KEYS = {
    "environment", "scoring_date", "model_version", "build", "model_run_id", "slot", "run_id", "experiment",
    "input", "output", "table", "table_format", "rows", "rows_scored", "rows_unscored", "nulls", "churners",
    "mean_probability", "risk_decile_cuts", "seconds", "riskiest",
}


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """A local environment with version 1 registered and a 200-customer table."""
    folder = tmp_path_factory.mktemp("score-cli")
    config = folder / "environments.toml"
    config.write_text(local_config_text(folder / "state"))
    env = load_environment("local", config)
    log_build(env, "b-cli-1")
    registry.register(registry.find_run("b-cli-1"))
    customers = folder / "customers.csv"
    synthetic.generate(200, seed=11).to_csv(customers, index=False)
    return config, customers


def score(local, *arguments: str) -> int:
    config, customers = local
    return main(["score", "--env", "local", "--config", str(config), "--input", str(customers), *arguments])


def test_json_is_one_object_with_the_run_and_the_riskiest_customers(local, spark, capsys):
    assert score(local, "--version", "1", "--date", "2026-12-01", "--json") == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)  # nothing else on stdout: the notebook's prints went to stderr
    assert set(document) == DOCUMENT_KEYS
    assert (document["environment"], document["model_version"], document["build"]) == ("local", "1", "b-cli-1")
    assert document["rows"] == document["rows_scored"] == 200 and document["experiment"] == "churn-scoring"
    assert document["output"].endswith("scores/scoring_date=2026-12-01") and document["slot"] is None
    riskiest = document["riskiest"]
    assert len(riskiest) == 10 and riskiest[0][contract.PROBABILITY] >= riskiest[-1][contract.PROBABILITY]
    assert {contract.ID_COLUMN, *contract.FEATURES, contract.PROBABILITY, "risk_decile"} <= set(riskiest[0])
    assert "score " in captured.err and "wrote " in captured.err


def test_the_human_summary_prints_the_ten_riskiest_customers(local, spark, capsys):
    assert score(local, "--version", "1", "--date", "2026-12-02") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("scored 200 customers for 2026-12-02 with model version 1 (build b-cli-1)")
    start = lines.index("the 10 riskiest customers:")
    assert lines[start + 1].split()[:3] == [contract.ID_COLUMN, contract.PROBABILITY, "risk_decile"]
    assert len(lines[start + 2:]) == 10
    probabilities = [float(line.split()[1]) for line in lines[start + 2:]]
    assert probabilities == sorted(probabilities, reverse=True)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--version", "1", "--date", "2026-02-30"], "scoring date '2026-02-30' is not a calendar date"),
        (["--version", "one"], "model version 'one' is invalid"),
        (["--version", "7"], "model churn-model has no version 7"),
        (["--slot", "stage"], "slot stage (churnservice-stage) serves no model version"),
    ],
    ids=["bad-date", "bad-version", "unknown-version", "empty-slot"],
)
def test_bad_requests_exit_2_with_one_line(local, spark, capsys, arguments, named):
    assert score(local, *arguments, "--json") == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and named in errors[0] and "Traceback" not in captured.err
    assert json.loads(captured.out) == {"error": errors[0].removeprefix("error: "), "kind": "usage", "exit_status": 2}


def test_a_bad_customer_table_exits_2_naming_the_column(local, spark, tmp_path, capsys):
    config, _ = local
    bad = tmp_path / "bad.csv"
    synthetic.generate(20).drop(columns=["Balance"]).to_csv(bad, index=False)
    assert main(["score", "--env", "local", "--config", str(config), "--version", "1", "--input", str(bad)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "lacks column Balance" in errors[0]


def test_slot_and_version_are_one_or_the_other(local, capsys):
    with pytest.raises(SystemExit) as usage:
        score(local, "--slot", "prod", "--version", "1")
    assert usage.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_status_shows_the_latest_scoring_run(local, spark, capsys):
    config, _ = local
    assert score(local, "--version", "1", "--date", "2026-12-03", "--json") == 0
    scored = json.loads(capsys.readouterr().out)
    assert main(["status", "--env", "local", "--config", str(config), "--json"]) == 0
    latest = json.loads(capsys.readouterr().out)["scoring"]
    assert (latest["run_id"], latest["scoring_date"], latest["model_version"], latest["rows"]) == (
        scored["run_id"], "2026-12-03", "1", 200)
    assert latest["status"] == "FINISHED" and latest["output"] == scored["output"]
    assert main(["status", "--env", "local", "--config", str(config)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("scoring:"))
    assert "2026-12-03 with version 1 build b-cli-1: 200 rows, 0 unscored, FINISHED" in line


# --- on Azure: the churn-score job -------------------------------------------------------------------


@pytest.fixture
def fake():
    with FakeJobsApi(job_id=5151, next_result=json.dumps(SCORED)) as api:
        yield api


@pytest.fixture
def azure(monkeypatch, tmp_path, local_config, fake):
    """`score --env dev` against the fake workspace; the stack's outputs include `score_job_id`."""
    import deploy.platform.azure_auth

    values = {name: f"test-{name}" for name in stack_outputs.OUTPUT_NAMES}
    values.update(databricks_host=fake.url, databricks_workspace_id=fake.workspace_resource_id,
                  tenant_id="11111111-1111-1111-1111-111111111111", score_job_id=str(fake.job_id))
    outputs_file = tmp_path / "churn-dev.json"
    outputs_file.write_text(json.dumps({"churn-dev": values}))
    if "score_job_id" not in stack_outputs.OUTPUT_NAMES:  # until the stack's outputs name the scoring job
        with_job = dataclasses.make_dataclass(
            "StackOutputsWithScoreJob", [("score_job_id", str)], bases=(stack_outputs.StackOutputs,), frozen=True
        )
        load = stack_outputs.load_outputs

        def load_with_job(env, path=None):
            return with_job(**dataclasses.asdict(load(env, path)), score_job_id=values["score_job_id"])

        monkeypatch.setattr(stack_outputs, "load_outputs", load_with_job)
    monkeypatch.setattr(deploy.platform.azure_auth, "credential", lambda env: entra_credential(fake.token))
    monkeypatch.setattr(jobs, "POLL_SECONDS", 0)

    def run(*arguments: str) -> int:
        return main(["score", "--env", "dev", "--config", str(local_config), "--outputs", str(outputs_file),
                     *arguments])

    return run


def test_azure_starts_the_score_job_with_the_notebooks_widgets_and_waits(fake, azure, capsys):
    assert azure("--date", "2026-12-01", "--json") == 0
    (start,) = fake.calls("POST", "jobs/run-now")
    assert start["body"]["job_id"] == fake.job_id
    assert start["body"]["notebook_params"] == {
        "env": "dev", "slot": "prod", "version": "", "scoringDate": "2026-12-01", "input": ""
    }
    document = json.loads(capsys.readouterr().out)
    assert document["run_id"] == "mlflow-scoring-run" and document["model_version"] == "4"
    assert document["job_run"]["state"] == "TERMINATED/SUCCESS" and document["experiment"] == "churn-scoring"


def test_azure_passes_a_version_and_an_input(fake, azure, capsys):
    uri = "abfss://churndata@chrndevdata.dfs.core.windows.net/customers-2026-12.csv"
    assert azure("--version", "4", "--date", "2026-12-01", "--input", uri) == 0
    (start,) = fake.calls("POST", "jobs/run-now")
    assert (start["body"]["notebook_params"]["version"], start["body"]["notebook_params"]["input"]) == ("4", uri)
    assert capsys.readouterr().out.startswith("scored 10000 customers for 2026-12-01 with model version 4")


def test_azure_a_failed_job_exits_1_with_one_line(fake, azure, capsys):
    fake.next_script, fake.next_error = fails("Workload failed", "UsageError: customer table lacks column Age")
    assert azure("--date", "2026-12-01") == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Workload failed" in errors[0] and "lacks column Age" in errors[0]


def test_azure_without_the_score_job_in_the_outputs_exits_2(fake, local_config, tmp_path, capsys):
    """Outputs of a stack from before the churn-score job: one line saying what to deploy, no job started."""
    values = {name: f"test-{name}" for name in stack_outputs.OUTPUT_NAMES if name != "score_job_id"}
    outputs_file = tmp_path / "churn-dev.json"
    outputs_file.write_text(json.dumps({"churn-dev": values}))
    code = main(["score", "--env", "dev", "--config", str(local_config), "--outputs", str(outputs_file)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "score_job_id" in errors[0] and not fake.runs


def test_the_notebook_parameters_are_the_widgets_the_notebook_declares():
    import ast

    from deploy import notebook_runtime, score
    from deploy.scoring.request import scoring_request

    env = load_environment("local")
    parameters = score.notebook_parameters(env, scoring_request("2026-12-01"))
    first_cell = ast.parse((notebook_runtime.NOTEBOOKS_DIR / "score_churn.py").read_text().split(
        notebook_runtime.CELL_SEPARATOR)[0])
    declared = [node.args[0].value for node in ast.walk(first_cell) if isinstance(node, ast.Call)
                and ast.unparse(node.func) in ("dbutils.widgets.text", "dbutils.widgets.dropdown")]
    assert list(parameters) == declared == ["env", "slot", "version", "scoringDate", "input"]


def test_cli_start_up_imports_neither_spark_nor_mlflow():
    import subprocess
    import sys

    probe = "import sys, deploy.cli, deploy.score; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
            "('pyspark', 'mlflow', 'pandas')))"
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=root, check=True).stdout
    assert out.strip() == "[]"
