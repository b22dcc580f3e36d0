"""The two decisions the CI systems leave to the CLI, so that neither holds shell logic of its own:

- `rollback --only-if-serving BUILD`, the step after a failed prod release: it moves the slot back only
  when the slot already serves BUILD (the failure came after the traffic switch); otherwise the slot
  still serves the previous release, and a rollback would undo that one.
- `rotate-secret --if-due`, the scheduled rotation: it rotates only a secret `status` warns about, and
  fails (exit 1, nothing rotated) when the secret's state cannot be read.

Both run through `deploy.cli.main` against the same fakes as the release and rotation CLI tests: the
Azure ML target over autospecs of azure-ai-ml, and the local HTTPS fakes of Entra ID, Graph and Key Vault.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config import load_environment
from deploy.cli import main
from deploy.release.rollout import down
from tests.fakes_azure import ENV_NAME, SECRET_NAME, FakeAzure, signed_in, write_environment
from tests.rollout_fixtures import FakeWorkspace, azure_cli_world

NOW = dt.datetime.now(dt.UTC)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# --- rollback --only-if-serving ----------------------------------------------------------------------


@pytest.fixture
def azure_stage(
    local_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[tuple[FakeWorkspace, list[str]]]:
    """Environment dev on a fake Azure ML workspace; its stage slot serves build B with A kept for rollback."""
    local = load_environment("local", local_config)
    workspace, outputs = azure_cli_world(local_config, tmp_path, monkeypatch, request)
    common = ["--env", "dev", "--config", str(local_config), "--outputs", str(outputs)]
    for build in ("A", "B"):
        assert main(["release", "--to", "stage", "--build", build, *common]) == 0
    yield workspace, common
    down(local)


def serving(workspace: FakeWorkspace, slot: str = "stage") -> dict[str, int]:
    """The deployments that take traffic, with their share."""
    return {name: share for name, share in workspace.traffic(f"churnservice-{slot}-chrndev").items() if share}


def test_rollback_only_if_serving_changes_nothing_when_the_slot_serves_another_build(
    azure_stage: tuple[FakeWorkspace, list[str]], capsys
) -> None:
    workspace, common = azure_stage
    capsys.readouterr()

    for build in ("A", "20261126.3"):  # the rollback target's build, and one the slot never served
        status, out, _ = run_cli(capsys, "rollback", "--to", "stage", "--only-if-serving", build, *common)
        assert status == 0
        assert out == f"churnservice-stage-chrndev serves build B, not {build}: nothing to roll back\n"
        assert serving(workspace) == {"churn-v2": 100}
        assert workspace.names("churnservice-stage-chrndev") == ["churn-v1", "churn-v2"]  # rollback target kept


def test_rollback_only_if_serving_rolls_back_when_the_slot_serves_that_build(
    azure_stage: tuple[FakeWorkspace, list[str]], capsys
) -> None:
    workspace, common = azure_stage
    capsys.readouterr()

    status, out, _ = run_cli(capsys, "rollback", "--to", "stage", "--only-if-serving", "B", "--json", *common)

    assert status == 0
    assert json.loads(out)["rolled_back_from"] == "churn-v2"
    assert serving(workspace) == {"churn-v1": 100}
    # A retried step finds the slot serving A now, and leaves it alone.
    status, out, _ = run_cli(capsys, "rollback", "--to", "stage", "--only-if-serving", "B", "--json", *common)
    assert status == 0
    assert json.loads(out) == {
        "environment": "dev", "slot": "stage", "endpoint": "churnservice-stage-chrndev", "rolled_back": False,
        "serving_build": "A",
    }
    assert serving(workspace) == {"churn-v1": 100}


def test_rollback_only_if_serving_on_an_empty_slot_and_with_a_malformed_build(
    azure_stage: tuple[FakeWorkspace, list[str]], capsys
) -> None:
    workspace, common = azure_stage
    capsys.readouterr()

    status, out, _ = run_cli(capsys, "rollback", "--to", "prod", "--only-if-serving", "B", *common)
    assert (status, out) == (0, "churnservice-prod-chrndev serves build none, not B: nothing to roll back\n")

    # An empty pipeline variable must not turn the guard into "never roll back" silently.
    status, _, err = run_cli(capsys, "rollback", "--to", "stage", "--only-if-serving", "", *common)
    assert status == 2
    assert err.strip().splitlines()[-1].startswith("error: --only-if-serving '' is invalid; expected 1-100 letters")
    assert serving(workspace) == {"churn-v2": 100}


# --- rotate-secret --if-due ----------------------------------------------------------------------------


@pytest.fixture
def fake(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAzure]:
    with signed_in(certificate, monkeypatch) as service:
        yield service


def rotation_cli(fake: FakeAzure, tmp_path: Path, expires_in_days: float | None) -> list[str]:
    """The common arguments; with `expires_in_days`, Key Vault holds a working secret expiring then."""
    config, outputs = write_environment(tmp_path, fake, token_retry_seconds=1)
    if expires_in_days is not None:
        end = NOW + dt.timedelta(days=expires_in_days)
        previous = fake.add_password("rotated earlier", NOW - dt.timedelta(days=60), end)
        fake.store_secret(SECRET_NAME, previous.secret, {"key-id": previous.key_id}, exp=end.timestamp())
    return ["rotate-secret", "--env", ENV_NAME, "--config", str(config), "--outputs", str(outputs), "--if-due"]


def test_rotate_if_due_leaves_a_secret_far_from_expiry_alone(fake: FakeAzure, tmp_path: Path, capsys) -> None:
    argv = rotation_cli(fake, tmp_path, expires_in_days=80.5)
    before = set(fake.passwords)

    status, out, _ = run_cli(capsys, *argv)
    assert (status, out) == (0, f"secret '{SECRET_NAME}' expires in 80 days; not due\n")
    status, out, _ = run_cli(capsys, *argv, "--json")
    document: dict[str, Any] = json.loads(out)
    assert status == 0 and (document["ok"], document["rotated"]) == (True, False)
    assert document["secret"]["secret_days_to_expiry"] == 80 and document["secret"]["warning"] is None
    assert fake.writes() == [] and set(fake.passwords) == before


@pytest.mark.parametrize("expires_in_days", [12.5, None], ids=["near expiry", "missing"])
def test_rotate_if_due_rotates_a_secret_status_warns_about(
    fake: FakeAzure, tmp_path: Path, capsys, expires_in_days: float | None
) -> None:
    argv = rotation_cli(fake, tmp_path, expires_in_days)

    status, out, err = run_cli(capsys, *argv, "--json")

    assert status == 0, err
    document = json.loads(out)
    assert document["ok"] is True and document["new_key_id"] in fake.passwords
    assert "rotating: " in err and "run rotate-secret" in err  # the warning that made it due
    assert fake.latest_secret(SECRET_NAME)["tags"]["key-id"] == document["new_key_id"]


def test_rotate_if_due_fails_without_rotating_when_the_state_is_unknown(
    fake: FakeAzure, tmp_path: Path, capsys
) -> None:
    argv = rotation_cli(fake, tmp_path, expires_in_days=80.5)
    fake.faults["listPasswords"] = 403
    before = set(fake.passwords)

    status, out, err = run_cli(capsys, *argv)

    assert (status, out) == (1, "")
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: the client secret's state is unknown (Graph could not be read (")
    assert line.endswith("); nothing rotated")
    assert fake.writes() == [] and set(fake.passwords) == before
