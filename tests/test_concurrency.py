"""Two commands at once, as real processes: two releases into one slot, two trainings of one build, a slot that
stops answering. Before the slot lock, both releases printed "now serves" and left the slot on a deployment
whose server was gone (every request 502); both trainings finished and the build could never be released."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from config import EnvConfig, load_environment
from deploy.release import registry
from deploy.release.rollout import down
from deploy.release.targets.local import LocalTarget, score
from tests.conftest import PROJECT_ROOT
from tests.rollout_fixtures import build_test_set, log_build, offline

pytestmark = pytest.mark.slow


@pytest.fixture
def env(local_config: Path) -> Iterator[EnvConfig]:
    environment = load_environment("local", local_config)
    yield environment
    down(environment)


def start(config: Path, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "deploy", *argv, "--env", "local", "--config", str(config)], cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=600)
    return process.returncode, out, err


def test_two_releases_into_one_slot_take_turns_and_leave_it_serving(env: EnvConfig, local_config: Path) -> None:
    log_build(env, "A", seed=1)
    log_build(env, "B", seed=2)
    first = start(local_config, "release", "--to", "stage", "--build", "A", "--json")
    second = start(local_config, "release", "--to", "stage", "--build", "B", "--json")
    results = [finish(first), finish(second)]

    assert [status for status, _, _ in results] == [0, 0], [err for _, _, err in results]
    waited = [err for _, _, err in results if "waiting for the lock on slot stage" in err]
    assert len(waited) == 1  # the second one started while the first held the slot, and said so
    last = json.loads(next(out for (_, out, err) in results if err in waited))
    # The slot ends on the deployment of the release that went second, with the first one kept for rollback,
    # and every deployment it names is running: nothing deleted the other's server.
    endpoint = LocalTarget(env).describe("stage")
    assert endpoint.serving.name == last["deployment"] and endpoint.previous == last["previous"]
    assert all(deployment.healthy for deployment in endpoint.deployments)
    rows = build_test_set(env, "A").drop(columns=["Exited"]).head(20)
    assert score(env.local.port("stage"), rows)["predictions"] == offline(last["version"], rows)


def test_a_release_that_cannot_get_the_lock_in_time_exits_1_naming_the_holder(env: EnvConfig, local_config: Path,
                                                                             tmp_path: Path) -> None:
    from deploy.platform.locks import Locks

    log_build(env, "A", seed=1)
    with Locks(str(env.local.state_dir / "churndata")).hold("slot-stage", "slot stage", wait_seconds=0):
        status, out, err = finish(start(local_config, "release", "--to", "stage", "--build", "A", "--lock-wait", "1",
                                        "--json"))
    assert status == 1
    assert f"(pid {os.getpid()}, " in err.splitlines()[-1] and "nothing changed" in err.splitlines()[-1]
    assert json.loads(out)["kind"] == "refused"
    assert LocalTarget(env).describe("stage") is None  # it started nothing


def test_two_trainings_of_one_build_leave_one_run_that_release_finds(env: EnvConfig, local_config: Path) -> None:
    first = start(local_config, "train", "--build", "twice", "--source", "tests@1", "--json")
    second = start(local_config, "train", "--build", "twice", "--source", "tests@1", "--json")
    results = [finish(first), finish(second)]

    assert [status for status, _, _ in results] == [0, 0], [err for _, _, err in results]
    documents = [json.loads(out) for _, out, _ in results]
    assert documents[0]["run_id"] == documents[1]["run_id"]
    assert sorted(document["reused"] for document in documents) == [False, True]
    from deploy.platform import tracking

    tracking.use_environment(env)
    assert registry.find_run("twice").info.run_id == documents[0]["run_id"]  # exactly one finished run


def test_status_fails_when_a_serving_slot_does_not_answer(env: EnvConfig, local_config: Path) -> None:
    log_build(env, "A", seed=1)
    assert finish(start(local_config, "release", "--to", "stage", "--build", "A"))[0] == 0
    status, out, _ = finish(start(local_config, "status", "--json"))
    assert status == 0 and json.loads(out)["slots"]["stage"]["probe"]["answered"]

    # The serving deployment's server dies; the router is fine, so every request through the slot fails.
    state = json.loads((env.local.state_dir / "serving" / "stage.json").read_text())
    os.killpg(state["deployments"]["churn-v1"]["process"]["pid"], signal.SIGKILL)
    status, out, _ = finish(start(local_config, "status", "--json"))
    document = json.loads(out)
    stage = document["slots"]["stage"]
    assert status == 1 and not document["healthy"]
    assert stage["state"] == "Unreachable" and not stage["probe"]["answered"]
    assert document["slots"]["prod"]["healthy"]  # the other slot is reported as it is
    status, text, _ = finish(start(local_config, "status"))
    assert status == 1 and "stage: churnservice-stage (Unreachable)" in text and "answers:    NO: " in text


def test_an_experiment_another_command_created_meanwhile_is_used_not_refused(
    env: EnvConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from deploy.platform import tracking

    tracking.use_environment(env)
    theirs = mlflow.create_experiment("churn-race", artifact_location=(env.local.state_dir / "x").as_uri())
    looked = mlflow.get_experiment_by_name
    looks: list[str] = []

    def look(name: str) -> object:
        looks.append(name)
        return None if len(looks) == 1 else looked(name)  # our first look came before the other's create

    monkeypatch.setattr(mlflow, "get_experiment_by_name", look)
    assert tracking.ensure_experiment(env, "churn-race") == theirs and looks == ["churn-race"] * 2
