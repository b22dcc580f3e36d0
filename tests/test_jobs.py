"""The training job trigger: the real databricks-sdk client, Entra ID auth, and a fake Jobs API on 127.0.0.1."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from unittest.mock import create_autospec

import pytest
from azure.core.credentials import AccessToken
from azure.identity import DefaultAzureCredential

from config import load_environment
from deploy.cli import main
from deploy.core.errors import DeployError, Refused
from deploy.platform import jobs
from deploy.platform.outputs import OUTPUT_NAMES, load_outputs
from tests.fakes_databricks import SUCCEEDS, FakeJobsApi, Step, fails

TRAINED = {"run_id": "mlflow-run-1", "build": "20261126.3", "source": "repo@abc", "experiment": "automl-churn",
           "metrics": {"auc": 0.861, "accuracy": 0.86, "precision": 0.7, "recall": 0.5, "f1": 0.58}}
RUNNING_THEN_SUCCEEDS = (Step("RUNNING"), Step("RUNNING"), Step("TERMINATED", "SUCCESS"))


def entra_credential(token: str, management: str = FakeJobsApi.management_token) -> DefaultAzureCredential:
    """The azure-identity credential's shape: a fixed token for AzureDatabricks, another for Azure management."""
    credential = create_autospec(DefaultAzureCredential, instance=True)

    def get_token(scope: str, **_: Any) -> AccessToken:
        issued = management if scope.startswith("https://management.core.windows.net") else token
        return AccessToken(issued, int(time.time()) + 3600)

    credential.get_token.side_effect = get_token
    return credential


@pytest.fixture
def fake():
    with FakeJobsApi(next_result=json.dumps(TRAINED)) as api:
        yield api


@pytest.fixture
def outputs_file(tmp_path: Path, fake: FakeJobsApi) -> Path:
    values = {name: f"test-{name}" for name in OUTPUT_NAMES}
    values.update(
        databricks_host=fake.url, databricks_workspace_id=fake.workspace_resource_id, train_job_id=str(fake.job_id),
        tenant_id="11111111-1111-1111-1111-111111111111",
    )
    path = tmp_path / "churn-dev.json"
    path.write_text(json.dumps({"churn-dev": values}))
    return path


@pytest.fixture
def credential(fake: FakeJobsApi) -> DefaultAzureCredential:
    return entra_credential(fake.token)


@pytest.fixture
def client(local_config: Path, outputs_file: Path, credential: DefaultAzureCredential):
    env = load_environment("dev", local_config)
    return jobs.workspace_client(env, load_outputs(env, outputs_file), credential)


def test_run_now_passes_the_build_and_waits_through_each_state(fake, client, credential, capsys):
    result = jobs.run_training(client, str(fake.job_id), "20261126.3", "repo@abc", poll_seconds=0)

    (start,) = fake.calls("POST", "jobs/run-now")
    assert start["body"]["job_id"] == fake.job_id
    assert start["body"]["notebook_params"] == {"buildNumber": "20261126.3", "buildSource": "repo@abc"}
    assert start["body"]["queue"] == {"enabled": True}
    assert result.state == "TERMINATED/SUCCESS" and not result.reused
    assert result.run_page_url.endswith(f"#job/{fake.job_id}/run/{result.run_id}")
    assert result.notebook_result == TRAINED
    # get-output is asked of the task run, as the API requires for job runs
    (output,) = fake.calls("GET", "jobs/runs/get-output")
    assert output["query"]["run_id"] == str(fake.runs[result.run_id].task_run_id)
    stderr = capsys.readouterr().err
    assert "PENDING" in stderr and f"job run {result.run_id}: RUNNING" in stderr and "TERMINATED/SUCCESS" in stderr


def test_every_request_carries_an_entra_token_for_azure_databricks_and_the_workspace_id(fake, client, credential):
    jobs.run_training(client, fake.job_id, "b-1", "repo@abc", poll_seconds=0)

    assert fake.requests and all(
        call["headers"]["Authorization"] == f"Bearer {fake.token}"
        and call["headers"]["X-Databricks-Azure-Workspace-Resource-Id"] == fake.workspace_resource_id
        for call in fake.requests
    )
    # One token of each for the whole wait: each is reused until shortly before it expires.
    assert sorted(call.args[0] for call in credential.get_token.call_args_list) == [
        f"{jobs.AZURE_DATABRICKS_APP_ID}/.default", "https://management.core.windows.net/.default"
    ]


def test_a_service_principal_that_is_not_a_workspace_user_gets_in_with_its_management_token(fake, local_config,
                                                                                           outputs_file):
    env = load_environment("dev", local_config)
    client = jobs.workspace_client(env, load_outputs(env, outputs_file), entra_credential(fake.token))
    jobs.run_training(client, fake.job_id, "b-1", "repo@abc", poll_seconds=0)
    assert all(call["headers"]["X-Databricks-Azure-SP-Management-Token"] == fake.management_token
               for call in fake.requests)
    # Without it (what the kit sent before), the workspace refuses such a principal.
    stripped = jobs.workspace_client(env, load_outputs(env, outputs_file), entra_credential(fake.token, "nothing"))
    with pytest.raises(Exception, match="not a user of this workspace"):
        jobs.run_training(stripped, fake.job_id, "b-2", "repo@abc", poll_seconds=0)


def test_a_token_close_to_expiry_is_refreshed(fake):
    credential = create_autospec(DefaultAzureCredential, instance=True)
    credential.get_token.return_value = AccessToken(fake.token, int(time.time()) + 60)
    headers = jobs.EntraIdCredentials(credential, fake.workspace_resource_id)(None)
    headers()
    headers()
    assert credential.get_token.call_count == 4  # both tokens, twice: each was within the refresh margin


def test_a_wrong_token_is_refused_by_the_workspace(fake, local_config, outputs_file):
    env = load_environment("dev", local_config)
    client = jobs.workspace_client(env, load_outputs(env, outputs_file), entra_credential("someone-else"))
    with pytest.raises(Exception, match="Invalid access token"):
        jobs.run_training(client, fake.job_id, "b-1", "repo@abc", poll_seconds=0)
    assert not fake.runs


def test_a_failed_run_raises_its_state_message_its_error_and_its_url(fake, client):
    fake.next_script, fake.next_error = fails(
        "Workload failed, see run output for details", "UsageError: churn CSV lacks column Age"
    )
    with pytest.raises(Refused) as raised:
        jobs.run_training(client, fake.job_id, "b-2", "repo@abc", poll_seconds=0)
    message = str(raised.value)
    (run,) = fake.runs.values()
    assert "TERMINATED/FAILED" in message
    assert "Workload failed, see run output for details" in message
    assert "UsageError: churn CSV lacks column Age" in message
    assert f"#job/{fake.job_id}/run/{run.run_id}" in message


def test_a_skipped_run_is_a_failure_too(fake, client):
    fake.next_script = (Step("SKIPPED", state_message="An active run of this job already exists"),)
    with pytest.raises(Refused, match="SKIPPED: An active run of this job already exists"):
        jobs.run_training(client, fake.job_id, "b-2", "repo@abc", poll_seconds=0)


def test_a_running_run_of_the_same_build_is_reported_and_waited_for_not_started_again(fake, client, capsys):
    existing = fake.add_run("b-3", RUNNING_THEN_SUCCEEDS, notebook_result=json.dumps(TRAINED))
    fake.add_run("other-build", SUCCEEDS)

    result = jobs.run_training(client, fake.job_id, "b-3", "repo@abc", poll_seconds=0)

    assert not fake.calls("POST", "jobs/run-now")
    assert result.run_id == existing.run_id and result.reused and result.state == "TERMINATED/SUCCESS"
    assert result.notebook_result == TRAINED
    assert f"already has job run {existing.run_id} (RUNNING)" in capsys.readouterr().err


def test_a_succeeded_run_of_the_same_build_is_reported(fake, client):
    existing = fake.add_run("b-4", (Step("TERMINATED", "SUCCESS"),), notebook_result=json.dumps(TRAINED))
    result = jobs.run_training(client, fake.job_id, "b-4", "repo@abc", poll_seconds=0)
    assert not fake.calls("POST", "jobs/run-now")
    assert (result.run_id, result.reused, result.notebook_result) == (existing.run_id, True, TRAINED)


def test_a_failed_run_of_the_same_build_does_not_count(fake, client):
    failed = fake.add_run("b-5", (Step("TERMINATED", "FAILED", "boom"),))
    result = jobs.run_training(client, fake.job_id, "b-5", "repo@abc", poll_seconds=0)
    assert len(fake.calls("POST", "jobs/run-now")) == 1
    assert result.run_id != failed.run_id and not result.reused


def test_the_duplicate_check_reads_past_the_first_page_of_runs(fake, client):
    wanted = fake.add_run("b-old", (Step("TERMINATED", "SUCCESS"),), notebook_result=json.dumps(TRAINED))
    for number in range(30):
        fake.add_run(f"newer-{number}", (Step("TERMINATED", "SUCCESS"),))
    result = jobs.run_training(client, fake.job_id, "b-old", "repo@abc", poll_seconds=0)
    assert result.run_id == wanted.run_id and not fake.calls("POST", "jobs/run-now")
    assert any(call["query"].get("page_token") for call in fake.calls("GET", "jobs/runs/list"))


def test_force_starts_a_new_run_even_when_the_build_succeeded(fake, client):
    existing = fake.add_run("b-6", (Step("TERMINATED", "SUCCESS"),))
    result = jobs.run_training(client, fake.job_id, "b-6", "repo@abc", force=True, poll_seconds=0)
    (start,) = fake.calls("POST", "jobs/run-now")
    assert start["body"]["notebook_params"] == {"buildNumber": "b-6", "buildSource": "repo@abc", "force": "true"}
    assert result.run_id != existing.run_id and not result.reused
    assert not fake.calls("GET", "jobs/runs/list")  # --force doesn't even look


def test_no_wait_returns_right_after_starting(fake, client):
    result = jobs.run_training(client, fake.job_id, "b-7", "repo@abc", wait=False, poll_seconds=0)
    assert result.state == "PENDING" and result.notebook_result is None
    assert len(fake.calls("GET", "jobs/runs/get")) == 1
    assert not fake.calls("GET", "jobs/runs/get-output")


def test_no_wait_reports_a_running_duplicate_without_waiting(fake, client):
    existing = fake.add_run("b-8", RUNNING_THEN_SUCCEEDS)
    result = jobs.run_training(client, fake.job_id, "b-8", "repo@abc", wait=False, poll_seconds=0)
    assert (result.run_id, result.state, result.reused) == (existing.run_id, "RUNNING", True)
    assert not fake.calls("GET", "jobs/runs/get") and not fake.calls("POST", "jobs/run-now")


def test_waiting_gives_up_after_the_budget_and_leaves_the_run_going(fake, client):
    fake.next_script = (Step("RUNNING"),)
    with pytest.raises(DeployError, match=r"still RUNNING after 0 minutes; stopped waiting, the run goes on: https://"):
        jobs.run_training(client, fake.job_id, "b-9", "repo@abc", timeout_minutes=0, poll_seconds=0)


# --- through the CLI ------------------------------------------------------------------------------


@pytest.fixture
def cli(monkeypatch, local_config, outputs_file, credential):
    """`python -m deploy train --env dev` against the fake: only the Azure login is swapped for the test credential."""
    import deploy.platform.azure_auth

    monkeypatch.setattr(deploy.platform.azure_auth, "credential", lambda env: credential)
    monkeypatch.setattr(jobs, "POLL_SECONDS", 0)

    def run(*arguments: str) -> int:
        common = ["--env", "dev", "--config", str(local_config), "--outputs", str(outputs_file)]
        return main(["train", *common, *arguments])

    return run


def test_cli_json_reports_the_mlflow_run_the_notebook_logged(fake, cli, capsys):
    assert cli("--build", "20261126.3", "--source", "repo@abc", "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert document["run_id"] == "mlflow-run-1" and document["metrics"]["auc"] == 0.861
    assert (document["build"], document["experiment"], document["environment"]) == ("20261126.3", "automl-churn", "dev")
    assert document["job_run"]["state"] == "TERMINATED/SUCCESS" and document["job_run"]["run_page_url"]
    assert document["reused"] is False


def test_cli_without_build_or_source_generates_a_build_and_says_manual(fake, cli, capsys):
    assert cli("--no-wait", "--json") == 0
    document = json.loads(capsys.readouterr().out)
    (start,) = fake.calls("POST", "jobs/run-now")
    params = start["body"]["notebook_params"]
    assert params["buildSource"] == "manual" and len(params["buildNumber"]) == 36  # a uuid4
    assert document["build"] == params["buildNumber"] and document["run_id"] is None
    assert document["job_run"]["state"] == "PENDING"


def test_cli_failure_exits_1_with_one_line_naming_the_message_and_url(fake, cli, capsys):
    fake.next_script, fake.next_error = fails("Workload failed", "ValueError: no data")
    assert cli("--build", "b-10") == 1
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err_lines) == 1 and "Workload failed" in err_lines[0] and "azuredatabricks.net" in err_lines[0]


def test_cli_refuses_data_outside_local_and_a_missing_outputs_file(fake, cli, local_config, tmp_path, capsys):
    assert cli("--data", str(tmp_path / "x.csv")) == 2
    assert "--data is for the local environment only" in capsys.readouterr().err
    assert main(["train", "--env", "dev", "--config", str(local_config), "--outputs", str(tmp_path / "none.json")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not fake.runs
