"""The CLI contract of release, rollback, status and down: exit statuses, one-line errors, `--json` shapes.

Most tests call `deploy.cli.main` in-process (the parser, the handler and the error handling are
all real); one runs `python -m deploy` as a process to check what a pipeline step sees.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config import EnvConfig, load_environment
from deploy.cli import main
from deploy.release.rollout import down
from tests.rollout_fixtures import azure_cli_world, log_build

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RELEASE_KEYS = {
    "environment", "slot", "endpoint", "url", "build", "source", "run_id", "version", "deployment", "previous",
    "already_serving", "gate", "validation", "overrides",
}
SLOT_KEYS = {"endpoint", "url", "state", "traffic", "serving", "previous", "deployments", "probe", "healthy",
             "last_validation", "monitoring"}


@pytest.fixture
def env(local_config: Path) -> Iterator[EnvConfig]:
    environment = load_environment("local", local_config)
    yield environment
    down(environment)


def run_cli(capsys: pytest.CaptureFixture[str], config: Path, *argv: str) -> tuple[int, str, str]:
    status = main([*argv, "--config", str(config)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def error_line(stderr: str) -> str:
    """The one line an error prints (progress lines on stderr come before it)."""
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and not any("Traceback" in line for line in lines)
    return lines[-1]


def test_unknown_build_exits_2_with_one_line_naming_experiment_and_tag(env: EnvConfig, local_config: Path) -> None:
    log_build(env, "20261126.1")
    process = subprocess.run(
        [sys.executable, "-m", "deploy", "release", "--env", "local", "--config", str(local_config),
         "--to", "stage", "--build", "20261126.99"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert process.returncode == 2
    assert process.stdout == ""
    line = error_line(process.stderr)
    assert "experiment 'automl-churn'" in line and "buildnumber=20261126.99" in line
    assert process.stderr.count("error:") == 1


def test_a_refused_gate_exits_1(env: EnvConfig, local_config: Path, capsys) -> None:
    log_build(env, "bad", "inverted")
    status, out, err = run_cli(capsys, local_config, "release", "--env", "local", "--to", "stage", "--build", "bad")
    assert status == 1 and out == ""
    assert "quality gate refused version 1 (build bad) for stage" in error_line(err)


def test_promotion_without_stage_validation_exits_1(env: EnvConfig, local_config: Path, capsys) -> None:
    log_build(env, "fresh")
    status, _, err = run_cli(capsys, local_config, "release", "--env", "local", "--to", "prod", "--json")
    assert status == 1
    assert "has not passed stage validation" in error_line(err)


def test_rollback_with_nothing_to_roll_back_to_exits_1(env: EnvConfig, local_config: Path, capsys) -> None:
    status, out, err = run_cli(capsys, local_config, "rollback", "--env", "local", "--to", "prod", "--json")
    assert status == 1
    assert "has no previous deployment" in error_line(err)
    assert json.loads(out) == {"error": error_line(err).removeprefix("error: "), "kind": "refused", "exit_status": 1}


def test_down_is_for_the_local_environment_only(local_config: Path, capsys) -> None:
    status, _, err = run_cli(capsys, local_config, "down", "--env", "dev")
    assert status == 2
    assert "environment 'dev' is azure, expected a local one" in error_line(err)


def test_an_unknown_slot_is_refused_by_the_parser(local_config: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["release", "--env", "local", "--to", "qa", "--config", str(local_config)])
    assert exit_.value.code == 2
    assert "invalid choice: 'qa'" in capsys.readouterr().err


def test_status_json_of_a_fresh_environment(env: EnvConfig, local_config: Path, capsys) -> None:
    status, out, _ = run_cli(capsys, local_config, "status", "--env", "local", "--json")
    document = json.loads(out)
    assert status == 0 and document["environment"] == "local" and set(document["slots"]) == {"stage", "prod"}
    assert document["healthy"]  # nothing serves yet, so nothing fails to answer
    for slot, info in document["slots"].items():
        assert set(info) == SLOT_KEYS
        assert (info["endpoint"], info["state"], info["serving"]) == (f"churnservice-{slot}", "Absent", None)
    assert "secret" not in document  # local has no automation secret


@pytest.mark.slow
def test_release_status_rollback_down_on_local(env: EnvConfig, local_config: Path, capsys) -> None:
    log_build(env, "20261126.3", source="churn@abc123")
    status, out, err = run_cli(capsys, local_config, "release", "--env", "local", "--to", "stage",
                               "--build", "20261126.3", "--json")
    assert status == 0, err
    result = json.loads(out)
    assert set(result) == RELEASE_KEYS
    assert (result["build"], result["source"], result["version"], result["slot"]) == ("20261126.3", "churn@abc123",
                                                                                       "1", "stage")
    assert set(result["gate"]) == {
        "passed", "auc", "min_auc", "prod_version", "prod_auc", "max_auc_drop", "reference_auc", "prod_reference_auc",
        "max_champion_drop", "reasons",
    }
    assert set(result["validation"]) == {
        "passed", "rows", "errors", "mismatches", "p95_ms", "max_p95_ms", "reasons", "passes"
    }
    assert "still" not in out and "gate passed" in err  # progress on stderr, only JSON on stdout

    status, out, _ = run_cli(capsys, local_config, "status", "--env", "local")
    assert status == 0
    assert "serving:    version 1 build 20261126.3 (churn-v1, Succeeded)" in out
    assert f"url:        http://127.0.0.1:{env.local.port('stage')}/invocations" in out

    status, _, err = run_cli(capsys, local_config, "rollback", "--env", "local", "--to", "stage")
    assert status == 1 and "has no previous deployment" in error_line(err)

    status, out, _ = run_cli(capsys, local_config, "down", "--env", "local")
    assert status == 0 and out.startswith("stopped stage/churn-v1, stage/router:")
    status, out, _ = run_cli(capsys, local_config, "down", "--env", "local")
    assert (status, out) == (0, "no local scoring server was running\n")
    status, out, _ = run_cli(capsys, local_config, "status", "--env", "local", "--json")
    assert json.loads(out)["slots"]["stage"]["state"] == "Absent"


def test_release_and_rollback_json_on_azure(
    env: EnvConfig, local_config: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    workspace, outputs = azure_cli_world(local_config, tmp_path, monkeypatch, request)
    azure = ("--env", "dev", "--outputs", str(outputs), "--json")

    for build in ("A", "B"):
        status, out, err = run_cli(capsys, local_config, "release", "--to", "stage", "--build", build, *azure)
        assert status == 0, err
    released: dict[str, Any] = json.loads(out)
    assert released["endpoint"] == "churnservice-stage-chrndev" and released["previous"] == "churn-v1"

    status, out, _ = run_cli(capsys, local_config, "rollback", "--to", "stage", *azure)
    assert status == 0
    assert json.loads(out) == {
        "environment": "dev", "slot": "stage", "endpoint": "churnservice-stage-chrndev",
        "url": workspace.endpoints["churnservice-stage-chrndev"].scoring_uri,
        "deployment": "churn-v1", "version": "1", "rolled_back_from": "churn-v2", "rolled_back_version": "2",
    }

    status, _, err = run_cli(capsys, local_config, "release", "--to", "stage", "--build", "A", "--env", "dev",
                             "--outputs", str(tmp_path / "missing.json"))
    assert status == 2 and "outputs file" in error_line(err) and "not found" in error_line(err)
