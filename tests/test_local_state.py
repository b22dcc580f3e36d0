"""The local target's records under damage and crashes, with real processes on 127.0.0.1.

Most tests drive `LocalTarget` directly with the fixtures' imposter scoring servers (they start in
a fraction of a second and need no model files: what is under test is how processes are recorded,
found and stopped, not what they predict). The kill -9 test runs real releases in a subprocess,
with real MLflow scoring servers, and kills them at the two points where a process has been
started but not yet recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from config import EnvConfig, load_environment
from deploy.core.contract import FEATURES
from deploy.core.errors import DeployError
from deploy.release.rollout import down, release
from deploy.release.targets import local
from deploy.release.targets.base import STOPPED, SUCCEEDED
from deploy.release.targets.local import LocalTarget, score
from tests.conftest import PROJECT_ROOT
from tests.rollout_fixtures import build_test_set, imposter_command, log_build, offline

ROWS = pd.DataFrame({"Age": [30, 40]})


@pytest.fixture
def env(local_config: Path) -> Iterator[EnvConfig]:
    environment = load_environment("local", local_config)
    yield environment
    LocalTarget(environment).down()
    for pid in list(local._children):  # anything started but never recorded (a test died mid-start)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        local._children.pop(pid).wait(timeout=10)


@pytest.fixture
def imposters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deployments are the fixtures' imposter servers (they answer 7 for every row), which need no model files."""
    monkeypatch.setattr(LocalTarget, "server_command", imposter_command("wrong"))
    monkeypatch.setattr(LocalTarget, "_server_environment", lambda self, version: dict(os.environ))


def serve(target: LocalTarget, slot: str, *versions: str) -> None:
    """The slot's router, and one deployment per version, the last one taking the traffic."""
    target.ensure_endpoint(slot)
    for version in versions:
        target.create_deployment(slot, f"churn-v{version}", version)
    previous = f"churn-v{versions[0]}" if len(versions) > 1 else None
    target.switch_traffic(slot, f"churn-v{versions[-1]}", previous=previous)


def state_file(env: EnvConfig, slot: str) -> Path:
    return env.local.state_dir / "serving" / f"{slot}.json"


def recorded(env: EnvConfig, slot: str) -> list[dict[str, Any]]:
    state = json.loads(state_file(env, slot).read_text())
    return [state["router"]] + [entry["process"] for entry in state["deployments"].values()]


def gone(process: dict[str, Any]) -> bool:
    """Stopped: no such pid, or only its zombie (an orphan whose new parent never reaps it)."""
    try:
        return Path(f"/proc/{process['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def ours(env: EnvConfig) -> list[local.Running]:
    return local._processes_of(env.local.state_dir / "serving")


# --- a damaged state file (issue 11, item 6) ---------------------------------------------------------


DAMAGE = [
    "garbage{",
    "{}",
    "[]",
    '{"slot": "stage", "port": 5301.0, "router": null, "deployments": {}, "traffic": {}, "previous": null}',
    '{"slot": "stage", "port": 5301, "router": null, "deployments": {}, "traffic": {"v1": 100}, "previous": null}',
]


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_state_file_is_named_by_every_operation_and_down_still_stops_all(
    env: EnvConfig, imposters: None, damage: str
) -> None:
    target = LocalTarget(env)
    serve(target, "stage", "1")
    serve(target, "prod", "2")
    processes = recorded(env, "stage") + recorded(env, "prod")
    assert score(env.local.port("stage"), ROWS)["predictions"] == [7, 7]
    state_file(env, "stage").write_text(damage)

    operations = {
        "describe": lambda: target.describe("stage"),
        "ensure_endpoint": lambda: target.ensure_endpoint("stage"),
        "create_deployment": lambda: target.create_deployment("stage", "churn-v3", "3"),
        "invoke_deployment": lambda: target.invoke_deployment("stage", "churn-v1", ROWS),
        "invoke_slot": lambda: target.invoke_slot("stage", ROWS),
        "switch_traffic": lambda: target.switch_traffic("stage", "churn-v1", None),
        "delete_deployment": lambda: target.delete_deployment("stage", "churn-v1"),
    }
    for operation, call in operations.items():
        with pytest.raises(DeployError) as refused:
            call()
        message = str(refused.value)
        assert f"the local state file {state_file(env, 'stage')} is damaged (" in message, operation
        assert "delete it and run the command again" in message and "python -m deploy down --env local" in message
        assert "\n" not in message
        assert type(refused.value.__cause__) is not json.JSONDecodeError
    assert state_file(env, "stage").read_text() == damage  # nothing was written over it

    # The other slot is untouched and still described; the damaged slot still serves.
    prod = target.describe("prod")
    assert prod.state == SUCCEEDED and prod.serving.name == "churn-v2"
    assert score(env.local.port("stage"), ROWS)["predictions"] == [7, 7]

    stopped = target.down()
    assert sorted(stopped) == sorted([
        f"stage/router:{env.local.port('stage')}", "stage/churn-v1", f"prod/router:{env.local.port('prod')}",
        "prod/churn-v2",
    ])
    assert all(gone(process) for process in processes) and ours(env) == []
    assert not state_file(env, "stage").exists() and target.describe("stage") is None


# --- a state file deleted while its router and servers run ------------------------------------------------


def test_a_deleted_state_file_is_rebuilt_from_the_running_processes_and_the_router_adopted(
    env: EnvConfig, imposters: None, capsys: pytest.CaptureFixture[str]
) -> None:
    target = LocalTarget(env)
    serve(target, "stage", "1", "2")
    router, *servers = recorded(env, "stage")
    assert score(env.local.port("stage"), ROWS)["predictions"] == [7, 7]
    state_file(env, "stage").unlink()
    assert score(env.local.port("stage"), ROWS)["predictions"] == [7, 7]  # the router serves on

    # Described from the processes: both deployments, the traffic where the router sends it.
    stage = LocalTarget(env).describe("stage")
    assert stage.state == SUCCEEDED and stage.traffic == {"churn-v1": 0, "churn-v2": 100}
    assert stage.previous is None  # not known without the file
    assert "is missing; rebuilt from this kit's processes still running" in capsys.readouterr().err
    assert not state_file(env, "stage").exists()  # describing writes nothing

    # A release's first step adopts the router instead of blaming "another program" for its port.
    endpoint = LocalTarget(env).ensure_endpoint("stage")
    assert endpoint.serving.name == "churn-v2"
    rebuilt = json.loads(state_file(env, "stage").read_text())
    assert rebuilt["router"] == router
    assert sorted(entry["process"]["pid"] for entry in rebuilt["deployments"].values()) == sorted(
        process["pid"] for process in servers
    )

    # down finds them all, even with the file gone again.
    state_file(env, "stage").unlink()
    stopped = LocalTarget(env).down()
    assert sorted(stopped) == ["stage/churn-v1", "stage/churn-v2", f"stage/router:{env.local.port('stage')}"]
    assert all(gone(process) for process in [router, *servers]) and ours(env) == []


def test_a_recycled_pid_is_never_taken_for_ours(env: EnvConfig, imposters: None) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        target = LocalTarget(env)
        serve(target, "stage", "1")
        state = json.loads(state_file(env, "stage").read_text())
        state["deployments"]["churn-v1"]["process"]["pid"] = stranger.pid  # its start time is another's
        state_file(env, "stage").write_text(json.dumps(state))
        assert target.describe("stage").deployment("churn-v1").state == STOPPED
        target.down()
        assert stranger.poll() is None  # not ours: still running
    finally:
        stranger.kill()
        stranger.wait()


def test_moving_traffic_starts_the_router_again_if_it_died(env: EnvConfig, imposters: None) -> None:
    target = LocalTarget(env)
    serve(target, "stage", "1", "2")
    router = recorded(env, "stage")[0]
    os.killpg(router["pid"], signal.SIGKILL)
    local._children.pop(router["pid"]).wait()
    assert target.describe("stage").state == STOPPED
    target.switch_traffic("stage", "churn-v1", previous=None)  # as a rollback does
    assert target.describe("stage").state == SUCCEEDED and recorded(env, "stage")[0] != router
    assert target.invoke_slot("stage", ROWS) == [7, 7]


# --- logs of deleted deployments (item 9) ---------------------------------------------------------------


def test_deleted_deployments_keep_their_logs_rotated(
    env: EnvConfig, imposters: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "DELETED_LOGS_KEPT", 2)
    target = LocalTarget(env)
    serve(target, "stage", "9")
    logs = env.local.state_dir / "serving" / "logs"
    for version in ("1", "2", "3"):
        target.create_deployment("stage", f"churn-v{version}", version)
        (logs / f"stage-churn-v{version}.log").write_text(f"the last words of version {version}\n")
        target.delete_deployment("stage", f"churn-v{version}")
        assert not (logs / f"stage-churn-v{version}.log").exists()
    kept = sorted((logs / "deleted").iterdir())
    assert [path.name.split("-", 1)[1] for path in kept] == ["stage-churn-v2.log", "stage-churn-v3.log"]
    assert kept[-1].read_text() == "the last words of version 3\n"
    target.down()  # down deletes the rest, and keeps their logs the same way
    assert [path.name.split("-", 1)[1] for path in sorted((logs / "deleted").iterdir())] == [
        "stage-churn-v3.log", "stage-churn-v9.log"
    ]


# --- kill -9 mid-release (item 7), with real releases -------------------------------------------------------


def release_in_a_subprocess(env: EnvConfig, config: Path, build: str, pause: str, folder: Path) -> subprocess.Popen:
    """`python -m deploy release` with the test hook pausing it at `pause`; returns once it sits there."""
    errors = folder / f"release-{pause}.err"
    process = subprocess.Popen(
        [sys.executable, "-m", "deploy", "release", "--env", "local", "--config", str(config), "--to", "stage",
         "--build", build],
        cwd=PROJECT_ROOT, env={**os.environ, local.TEST_PAUSE: f"{pause}:120"}, stdout=subprocess.DEVNULL,
        stderr=errors.open("wb"),
    )
    deadline = time.monotonic() + 120
    while f"(test pause: 120 s at {pause})" not in errors.read_text():
        assert process.poll() is None, errors.read_text()
        assert time.monotonic() < deadline, errors.read_text()
        time.sleep(0.1)
    return process


@pytest.mark.slow
def test_kill_9_while_the_router_or_a_server_starts_then_a_re_run_converges_and_down_stops_all(
    env: EnvConfig, local_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_build(env, "A", seed=1)
    rows = build_test_set(env, "A")[list(FEATURES)].head(10)

    # The first release after `down`, killed right after its router started, before it was recorded.
    killed = release_in_a_subprocess(env, local_config, "A", "router-spawned", tmp_path)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert json.loads(state_file(env, "stage").read_text())["router"] is None
    [router] = ours(env)
    assert router.name == "router" and router.port == env.local.port("stage")

    # The re-run adopts that router; killed again, after its scoring server started and before it was recorded.
    killed = release_in_a_subprocess(env, local_config, "A", "server-spawned", tmp_path)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    state = json.loads(state_file(env, "stage").read_text())
    assert state["router"] == router.record and state["deployments"] == {}
    assert sorted(process.name for process in ours(env)) == ["churn-v1", "router"]

    # The next run converges: same router, the orphaned server adopted and reused, validated, serving.
    result = release(env, "stage", "A")
    err = capsys.readouterr().err
    assert "adopted deployment stage/churn-v1" in err and "reusing it" in err
    assert "in use by another program" not in err
    assert (result.version, result.deployment, result.validation["passed"]) == ("1", "churn-v1", True)
    final = json.loads(state_file(env, "stage").read_text())
    assert final["router"] == router.record and final["traffic"] == {"churn-v1": 100}
    assert score(env.local.port("stage"), rows)["predictions"] == offline("1", rows)

    processes = recorded(env, "stage")
    assert sorted(down(env)) == ["stage/churn-v1", f"stage/router:{env.local.port('stage')}"]
    assert all(gone(process) for process in processes) and ours(env) == []
