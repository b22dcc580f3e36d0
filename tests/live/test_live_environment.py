"""Against a real subscription: a throwaway environment from deploy to destroy, through the project's own
entry points (the Makefile's infra targets and `python -m deploy`), never a re-implementation of them.

    make live-test ENV=dev LIVE_CONFIRM=yes LIVE_ALLOWED_IPS=<this machine's public IP>

A random prefix keeps every name apart from the committed environments; the environment is disposable, so
`make infra-destroy` at the end purges everything it created. The steps depend on each other: a failed one
skips the rest, and the teardown runs whatever happened.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from config import config_path, load_environment
from tests.conftest import PROJECT_ROOT
from tests.live import harness

pytestmark = pytest.mark.live
PY = str(PROJECT_ROOT / ".venv" / "bin" / "python")


@dataclass
class Live:
    throwaway: harness.Throwaway
    build: str
    failed: list[str] = field(default_factory=list)
    role_assignment_id: str | None = None

    def step(self, name: str, command: list[str], minutes: int, capture: bool = True) -> dict[str, Any]:
        if self.failed:
            pytest.skip(f"{self.failed[0]} failed")
        try:
            printed = harness.run(command, self.throwaway, minutes, capture=capture)
        except (harness.StepFailed, subprocess.TimeoutExpired) as exc:
            self.failed.append(name)
            pytest.fail(f"{name}: {exc}")
        return json.loads(printed) if capture and printed.strip() else {}

    def do(self, name: str, action: Callable[[Live], None]) -> None:
        """A step of the suite's own (not a CLI command), which later steps depend on like the others."""
        if self.failed:
            pytest.skip(f"{self.failed[0]} failed")
        try:
            action(self)
        except Exception:
            self.failed.append(name)
            raise

    def cli(self, name: str, *arguments: str, minutes: int = 30) -> dict[str, Any]:
        return self.step(name, [PY, "-m", "deploy", *arguments, "--env", self.throwaway.name, "--json"], minutes)

    def make(self, target: str, minutes: int) -> None:
        self.step(target, [harness.tool("make"), "--no-print-directory", "-C", str(PROJECT_ROOT), target,
                           f"ENV={self.throwaway.name}", "CDKTN_ARGS=--auto-approve"], minutes, capture=False)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    base = load_environment(os.environ.get(harness.BASE_VARIABLE, "dev"))
    throwaway = harness.write_throwaway(
        base, config_path(), tmp_path_factory.mktemp("live"), harness.allowed_ips(os.environ, base),
        harness.random_prefix(),
    )
    print(f"\nthrowaway environment {throwaway.name}: stack {throwaway.stack_name}, config {throwaway.config_file}")
    session = Live(throwaway, build=f"live-{datetime.now(UTC):%Y%m%d.%H%M%S}")
    try:
        session.make("infra-deploy", minutes=60)
        session.cli("first secret", "rotate-secret", minutes=10)  # the runbook's step 4: notebooks read it
        yield session
    finally:
        tear_down(session)


def test_train_runs_on_databricks(live: Live):
    live.do("churn table upload", upload_churn_table)
    trained = live.cli("train", "train", "--build", live.build, "--source", f"live@{socket.gethostname()}",
                       minutes=90)
    assert trained["build"] == live.build and trained["run_id"]
    assert trained["metrics"]["auc"] > 0.7, trained["metrics"]  # the synthetic table reaches about 0.84


def test_release_to_stage(live: Live):
    released = live.cli("release to stage", "release", "--to", "stage", "--build", live.build, minutes=90)
    assert (released["slot"], released["build"]) == ("stage", live.build), released


def test_rotate_the_secret(live: Live):
    rotated = live.cli("rotate-secret", "rotate-secret", minutes=15)
    assert rotated, "rotate-secret printed nothing"


def test_status_shows_the_release_and_a_valid_secret(live: Live):
    status = live.cli("status", "status", minutes=10)
    serving = status["slots"]["stage"]["serving"]
    assert serving is not None and serving["build"] == live.build, status["slots"]["stage"]
    assert status["secret"], status


# --- what the CLI does not do: land the churn table, and clean up around `destroy` ---------------------


def upload_churn_table(live: Live) -> None:
    """The runbook's data step: a data role for whoever runs the suite, then the synthetic table."""
    from azure.core.exceptions import HttpResponseError

    from deploy.platform import azure_auth, storage, tracking
    from deploy.platform.outputs import load_outputs
    from deploy.training import synthetic

    env = load_environment(live.throwaway.name, live.throwaway.config_file)
    outputs = load_outputs(env)
    container = (f"/subscriptions/{outputs.subscription_id}/resourceGroups/{outputs.resource_group}/providers/"
                 f"Microsoft.Storage/storageAccounts/{outputs.data_account}/blobServices/default/containers/"
                 f"{outputs.data_container}")
    me, kind = signed_in_principal()
    live.role_assignment_id = az("role", "assignment", "create", "--assignee-object-id", me,
                                 "--assignee-principal-type", kind, "--role", "Storage Blob Data Contributor",
                                 "--scope", container, "--query", "id", "-o", "tsv")
    table = Path(live.throwaway.config_file.parent / "Churn_Modelling.csv")
    synthetic.write_if_missing(table)
    location = storage.join(tracking.data_root(env, outputs), "Churn_Modelling.csv")
    credential = azure_auth.credential(env)
    for attempt in range(20):  # a new role assignment takes a few minutes to reach the data plane
        try:
            storage.write_text(location, table.read_text(), credential)
            return
        except HttpResponseError as exc:
            if exc.status_code != 403 or attempt == 19:
                raise
            print("upload refused (403) until the new role assignment propagates; retrying in 30 s")
            time.sleep(30)


def signed_in_principal() -> tuple[str, str]:
    """(object id, principal type) of the Azure CLI's signed-in user or service principal."""
    account = json.loads(az("account", "show", "-o", "json"))
    if account["user"]["type"] == "servicePrincipal":
        return az("ad", "sp", "show", "--id", account["user"]["name"], "--query", "id", "-o", "tsv"), "ServicePrincipal"
    return az("ad", "signed-in-user", "show", "--query", "id", "-o", "tsv"), "User"


def az(*arguments: str) -> str:
    return subprocess.run([harness.tool("az"), *arguments], check=True, capture_output=True, text=True,
                          timeout=300).stdout.strip()


def tear_down(live: Live) -> None:
    """Endpoints first (release created them, Terraform does not know them), then the stack, then local files."""
    throwaway = live.throwaway
    try:
        delete_endpoints(throwaway)
    except Exception as exc:  # the destroy below is what matters: report and go on
        print(f"could not delete the online endpoints first ({exc}); destroy deletes the workspace anyway")
    if live.role_assignment_id:
        try:
            az("role", "assignment", "delete", "--ids", live.role_assignment_id)
        except subprocess.CalledProcessError as exc:
            print(f"could not delete the temporary data role ({exc.stderr.strip()}); delete it by hand")
    try:
        harness.run([harness.tool("make"), "--no-print-directory", "-C", str(PROJECT_ROOT), "infra-destroy",
                     f"ENV={throwaway.name}", "CDKTN_ARGS=--auto-approve"], throwaway, timeout_minutes=60)
    except (harness.StepFailed, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"teardown failed ({exc}); finish it with: CHURN_CONFIG={throwaway.config_file} "
                    f"make infra-destroy ENV={throwaway.name}")
    for leftover in (PROJECT_ROOT / f"terraform.{throwaway.stack_name}.tfstate",
                     PROJECT_ROOT / f"terraform.{throwaway.stack_name}.tfstate.backup",
                     PROJECT_ROOT / "outputs" / f"{throwaway.stack_name}.json"):
        leftover.unlink(missing_ok=True)


def delete_endpoints(throwaway: harness.Throwaway) -> None:
    from azure.ai.ml import MLClient
    from azure.core.exceptions import ResourceNotFoundError

    from deploy.core.errors import UsageError
    from deploy.platform import azure_auth
    from deploy.platform.outputs import load_outputs

    env = load_environment(throwaway.name, throwaway.config_file)
    try:
        outputs = load_outputs(env)
    except UsageError:  # no outputs: the deploy never finished, so release made no endpoint
        return
    client = MLClient(azure_auth.credential(env), outputs.subscription_id, outputs.resource_group,
                      outputs.ml_workspace_name)
    for slot in ("stage", "prod"):
        try:
            client.online_endpoints.begin_delete(name=env.endpoint_name(slot)).result()
        except ResourceNotFoundError:
            continue
