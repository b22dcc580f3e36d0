"""`python -m deploy rotate-secret` end to end through `deploy.cli.main`, against the local HTTPS fakes.

The CLI builds its own clients, exactly as in production: the caller's identity comes from
azure-identity's chain (here its environment variables name the fake's admin client) and TLS trust
from REQUESTS_CA_BUNDLE (here the fake's self-signed certificate). Nothing test-specific is injected.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.cli import main
from deploy.core.errors import DeployError
from deploy.platform.outputs import OUTPUT_NAMES
from tests.fakes_azure import (
    ENV_NAME,
    GROUP_ID,
    NEVER,
    ROLES,
    SECRET_NAME,
    FakeAzure,
    signed_in,
    write_environment,
)

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def fake(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAzure]:
    with signed_in(certificate, monkeypatch) as service:
        yield service


@pytest.fixture
def cli(fake: FakeAzure, tmp_path: Path) -> list[str]:
    """The common arguments; the fake has a previous secret in use (in Key Vault, 60 days old)."""
    config, outputs = write_environment(tmp_path, fake, token_retry_seconds=1)
    assert set(json.loads(outputs.read_text())[f"churn-{ENV_NAME}"]) == set(OUTPUT_NAMES)
    previous = fake.add_password("rotated earlier", NOW - dt.timedelta(days=60), NOW + dt.timedelta(days=30))
    fake.store_secret(SECRET_NAME, previous.secret, {"key-id": previous.key_id})
    return ["--env", ENV_NAME, "--config", str(config), "--outputs", str(outputs)]


def test_json_document_of_a_successful_rotation(fake: FakeAzure, cli: list[str], capsys) -> None:
    status = main(["rotate-secret", *cli, "--json"])

    out, err = capsys.readouterr()
    assert status == 0
    document = json.loads(out)  # exactly one JSON object on stdout
    assert document["ok"] is True and document["failed_step"] is None
    assert document["new_key_id"] in fake.passwords
    assert dt.datetime.fromisoformat(document["expires"]) > NOW + dt.timedelta(days=89)
    assert document["removed_key_ids"] == [] and len(document["remaining_old_key_ids"]) == 1
    assert document["role_drift"]["drift"] is False
    assert [step["step"] for step in document["steps"]] == [
        "read_outputs", "add_password", "verify_token", "role_drift", "key_vault", "prune"
    ]
    assert all(step["state"] == "done" for step in document["steps"])
    assert "[6/6] prune: done" in err  # progress goes to stderr
    assert fake.latest_secret(SECRET_NAME)["tags"]["key-id"] == document["new_key_id"]


def test_human_summary_and_prune_now(fake: FakeAzure, cli: list[str], capsys) -> None:
    status = main(["rotate-secret", *cli, "--prune-now"])

    out, _ = capsys.readouterr()
    assert status == 0
    assert out.startswith("rotated: new credential") and "removed: " in out
    assert len(fake.passwords) == 1


@pytest.mark.parametrize("days", ["731", "0"])
def test_lifetime_out_of_range_is_a_usage_error_before_anything_happens(
    fake: FakeAzure, cli: list[str], capsys, days: str
) -> None:
    status = main(["rotate-secret", *cli, "--lifetime-days", days])

    assert status == 2
    assert f"--lifetime-days {days} is out of range; expected 1 to 730 days" in capsys.readouterr().err
    assert fake.requests == []


def test_prune_now_and_keep_old_exclude_each_other(cli: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["rotate-secret", *cli, "--prune-now", "--keep-old"])
    assert exited.value.code == 2


def test_dry_run_prints_the_plan_and_writes_nothing(fake: FakeAzure, cli: list[str], capsys) -> None:
    before = set(fake.passwords)

    status = main(["rotate-secret", *cli, "--dry-run", "--lifetime-days", "30"])

    out, _ = capsys.readouterr()
    assert status == 0
    assert out.startswith(f"plan for environment '{ENV_NAME}' (dry run, nothing changed)")
    assert "new client secret valid until" in out and "keep " in out
    assert fake.writes() == [] and set(fake.passwords) == before and len(fake.vault[SECRET_NAME]) == 1


def test_failure_exits_non_zero_and_says_what_state_the_environment_is_in(
    fake: FakeAzure, cli: list[str], capsys
) -> None:
    fake.faults["setSecret"] = 403

    status = main(["rotate-secret", *cli, "--json"])

    out, err = capsys.readouterr()
    assert status == 1
    document = json.loads(out)
    assert document["failed_step"] == "key_vault" and document["ok"] is False
    assert {step["step"]: step["state"] for step in document["steps"]}["add_password"] == "undone"
    assert "previous Key Vault version is still the latest and works" in document["environment_state"]
    assert err.strip().splitlines()[-1].startswith("error: rotation failed at key_vault;")
    assert len(fake.passwords) == 1 and fake.accepts(fake.client_id, fake.latest_secret(SECRET_NAME)["value"])


def test_role_drift_exits_non_zero_after_rotating(fake: FakeAzure, cli: list[str], capsys) -> None:
    fake.role_assignments.append({"principal": fake.principal_id, "role_guid": ROLES["Contributor"], "scope": GROUP_ID})

    status = main(["rotate-secret", *cli, "--json"])

    out, err = capsys.readouterr()
    document = json.loads(out)
    assert status == 1 and document["failed_step"] is None
    assert document["role_drift"]["unexpected"] == [{"role": "Contributor", "scope": GROUP_ID}]
    assert "secret rotated, but the role check failed: unexpected Contributor" in err
    assert fake.latest_secret(SECRET_NAME)["tags"]["key-id"] == document["new_key_id"]


def test_missing_outputs_file_is_a_usage_error(fake: FakeAzure, cli: list[str], tmp_path: Path, capsys) -> None:
    args = [*cli[:-1], str(tmp_path / "nowhere.json")]

    assert main(["rotate-secret", *args]) == 2
    assert "nowhere.json not found" in capsys.readouterr().err
    assert fake.requests == []


def test_local_environment_has_nothing_to_rotate(local_config: Path, capsys) -> None:
    assert main(["rotate-secret", "--env", "local", "--config", str(local_config)]) == 2
    assert "is local and has no automation identity" in capsys.readouterr().err


FAULTS = {
    "none": lambda fake: None,
    "token never valid": lambda fake: setattr(fake, "replication_delay", NEVER),
    "key vault write fails": lambda fake: fake.faults.update(setSecret=403),
    "remove password fails": lambda fake: fake.faults.update(removePassword=403),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_no_secret_text_in_any_output_channel(
    fake: FakeAzure, cli: list[str], capfd, caplog, fault: str
) -> None:
    FAULTS[fault](fake)
    caplog.set_level(logging.DEBUG)  # every logger, azure-core's HTTP logging and MSAL included

    raised: list[BaseException] = []
    try:
        main(["rotate-secret", *cli, "--json", "--debug", "--prune-now"])
    except DeployError as error:  # --debug re-raises, traceback and all
        raised.append(error)

    out, err = capfd.readouterr()
    tracebacks = "\n".join("".join(traceback.format_exception(error)) for error in raised)
    channels = {"stdout": out, "stderr": err, "logging": caplog.text, "exceptions": tracebacks}
    assert len(fake.issued_secrets) > 1, "the rotation created no secret, so this test would prove nothing"
    assert "Request URL" in caplog.text and "/addPassword" in caplog.text  # the SDK's HTTP logging was captured
    assert json.loads(out)["command"] == "rotate-secret"  # ... and the --json document
    for name, text in channels.items():
        for secret in [*fake.issued_secrets, fake.admin_secret]:
            assert secret not in text, f"a secret appeared in {name} ({fault})"
    assert bool(raised) == (fault != "none")
