"""The local rollout end to end, for real: an MLflow SQLite store, scoring servers and routers on 127.0.0.1.

Gate and input checks refuse before anything starts, so those tests start no server. The
blue/green lifecycle starts three real `mlflow models serve` deployments (about 10 s each) and
walks one sequence of releases, so each server start backs several assertions.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config import EnvConfig, load_environment
from deploy.core.contract import FEATURES
from deploy.core.errors import Refused, UsageError
from deploy.release import gate, registry
from deploy.release.rollout import down, release, rollback
from deploy.release.slot_status import status
from deploy.release.targets import local
from deploy.release.targets.local import LocalTarget, score
from tests.release_doubles import ServedBy
from tests.rollout_fixtures import Load, build_test_set, imposter_command, log_build, offline


@pytest.fixture
def env(local_config: Path) -> Iterator[EnvConfig]:
    environment = load_environment("local", local_config)
    yield environment
    down(environment)
    for pid in list(local._children):  # anything started but never recorded (a test died mid-start)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        local._children.pop(pid).wait(timeout=10)


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def slot_state(env: EnvConfig, slot: str) -> dict[str, Any]:
    return json.loads((env.local.state_dir / "serving" / f"{slot}.json").read_text())


def alias(slot: str) -> str | None:
    """The alias the release sets, as a convenience, where the registry has aliases (the local store does)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(registry.client().get_model_version_by_alias("churn-model", slot).version)
    except MlflowException:
        return None


def served(env: EnvConfig, slot: str, rows: Any) -> list[Any]:
    """Predictions through the slot's stable URL, as a client would get them."""
    return score(env.local.port(slot), rows)["predictions"]


# --- refusals before anything is deployed ---------------------------------------------------------


def test_unknown_build_is_bad_input_naming_experiment_and_tag(env: EnvConfig) -> None:
    log_build(env, "20261126.1")
    with pytest.raises(UsageError) as refused:
        release(env, "stage", "20261126.404")
    assert "experiment 'automl-churn'" in str(refused.value)
    assert "buildnumber=20261126.404" in str(refused.value)
    assert LocalTarget(env).describe("stage") is None


def test_two_finished_runs_for_one_build_are_bad_input(env: EnvConfig) -> None:
    first, second = log_build(env, "dup", seed=1), log_build(env, "dup", seed=2)
    with pytest.raises(UsageError, match="2 finished runs") as refused:
        release(env, "stage", "dup")
    assert first in str(refused.value) and second in str(refused.value)


def test_latest_takes_the_newest_finished_run(env: EnvConfig) -> None:
    log_build(env, "older", seed=1)
    newest = log_build(env, "newer", seed=2)
    from deploy.platform import tracking

    tracking.use_environment(env)
    assert registry.find_run("latest").info.run_id == newest
    assert registry.find_run(None).info.run_id == newest


def test_gate_refuses_a_model_below_the_threshold_and_records_it(env: EnvConfig) -> None:
    log_build(env, "bad", "inverted")
    with pytest.raises(Refused, match=r"below the minimum 0\.8") as refused:
        release(env, "stage", "bad")
    assert "the slot still serves what it served" in str(refused.value)
    tags = registry.version_tags("1")
    assert tags["gate.stage"] == "failed"
    assert json.loads(tags["gate.stage.detail"])["auc"] < 0.5
    assert "validated.stage" not in tags
    assert LocalTarget(env).describe("stage") is None  # no endpoint, no router
    assert not port_open(env.local.port("stage"))


def test_gate_refuses_a_model_worse_than_prod_on_the_same_test_set(env: EnvConfig) -> None:
    log_build(env, "strong", seed=1)
    registry.register(registry.find_run("strong"))
    prod = ServedBy("1")  # given: prod serves the strong model (its serving target says so)
    log_build(env, "age-only", "weak", seed=3)
    with pytest.raises(Refused, match="below prod version 1") as refused:
        release(env, "stage", "age-only", target=prod)
    detail = json.loads(registry.version_tags("2")["gate.stage.detail"])
    assert detail["auc"] >= env.gate.min_auc  # it passes the threshold ...
    assert detail["prod_auc"] - detail["auc"] > env.gate.max_auc_drop  # ... but not the comparison
    assert "the allowed drop is 0.0100" in str(refused.value)


def test_promote_to_prod_without_stage_validation_is_refused(env: EnvConfig) -> None:
    log_build(env, "fresh")
    with pytest.raises(Refused, match="has not passed stage validation"):
        release(env, "prod", "fresh")
    assert "validated.prod" not in registry.version_tags("1")
    assert LocalTarget(env).describe("prod") is None


def test_a_test_set_without_the_label_is_bad_input(env: EnvConfig) -> None:
    log_build(env, "unlabelled")
    path = env.local.state_dir / "churndata" / "runs" / "unlabelled" / "test.csv"
    path.write_text(path.read_text().replace("Exited", "Churned"))
    with pytest.raises(UsageError, match="lacks column Exited"):
        release(env, "stage", "unlabelled")


def test_a_run_without_a_recorded_test_set_is_scored_on_its_audit_trail(env: EnvConfig) -> None:
    log_build(env, "quiet", record_location=False)
    run = registry.find_run("quiet")
    location = gate.locate_test_split(env, None, run)
    assert location == str(env.local.state_dir / "churndata" / "runs" / "quiet" / "test.csv")
    assert len(gate.read_test_split(env, None, run)) == len(build_test_set(env, "quiet"))


# --- the smoke validation's rules ------------------------------------------------------------------


def test_smoke_validation_refuses_slow_answers_and_counts_a_warm_up_apart() -> None:
    import time

    import pandas as pd

    from config import Validation
    from deploy.release.smoke import percentile, validate

    rows = pd.DataFrame({"Age": [30, 40, 50]})
    calls = []

    def slow(frame: pd.DataFrame) -> list[int]:
        calls.append(int(frame["Age"].iloc[0]))
        time.sleep(0.02)
        return [1]

    result = validate(slow, rows, [1, 1, 1], Validation(rows=3, max_p95_ms=5))
    # The warm-up repeats the first row and is not timed; a slow pass is timed twice more, and stays slow.
    assert calls == [30, 30, 40, 50, 30, 40, 50, 30, 40, 50]
    assert (result.passed, result.rows, result.errors, result.mismatches, result.passes) == (False, 3, 0, 0, 3)
    assert result.p95_ms >= 20 and "p95 latency" in result.reasons[0] and "best of 3 passes" in result.reasons[0]
    assert validate(lambda frame: [1], rows, [1, 1, 1], Validation(rows=3, max_p95_ms=1000)).passed
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 95) == 5.0 and percentile([1.0, 2.0], 50) == 1.0


def test_smoke_validation_compares_numbers_within_round_trip_error() -> None:
    from deploy.release.smoke import same

    assert same(0.1 + 0.2, 0.3) and same([0.25, 0.75], [0.25, 0.75]) and same("yes", "yes")
    assert not same(0, 1) and not same(0.3, 0.31) and not same([0.1], [0.1, 0.2])


# --- the blue/green lifecycle, with real servers ----------------------------------------------------


@pytest.mark.slow
def test_blue_green_lifecycle(env: EnvConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    log_build(env, "A", seed=1)
    log_build(env, "B", seed=2)
    log_build(env, "BAD", "inverted", seed=4)
    # Registered up front, so versions are 1, 2, 3 in this order; each release reuses its version.
    assert [registry.register(registry.find_run(build)) for build in ("A", "B", "BAD")] == ["1", "2", "3"]
    target = LocalTarget(env)
    rows = build_test_set(env, "A")[list(FEATURES)]

    # The first release: the gate passes on the threshold alone, the endpoint appears, validated.
    first = release(env, "stage", "A")
    assert (first.version, first.deployment, first.previous, first.already_serving) == ("1", "churn-v1", None, False)
    assert first.gate["passed"] and first.gate["prod_version"] is None
    assert first.validation == {**first.validation, "passed": True, "rows": env.validation.rows, "errors": 0,
                                "mismatches": 0}
    assert first.url == f"http://127.0.0.1:{env.local.port('stage')}/invocations"
    assert served(env, "stage", rows.head(20)) == offline("1", rows.head(20))
    tags = registry.version_tags("1")
    assert tags["buildnumber"] == "A" and tags["run_id"] == first.run_id and tags["buildsource"] == "tests@local"
    assert (tags["gate.stage"], tags["validated.stage"]) == ("passed", "true")
    assert alias("stage") == "1"
    serving_process = slot_state(env, "stage")["deployments"]["churn-v1"]["process"]

    # A re-run converges: the slot already serves that version, nothing starts or moves.
    again = release(env, "stage", "A")
    assert again.already_serving and again.validation is None
    assert slot_state(env, "stage")["deployments"]["churn-v1"]["process"] == serving_process

    # --force past a failed gate and a missing stage validation: done, and recorded.
    forced = release(env, "prod", "BAD", force=True)
    assert forced.overrides == ("gate", "stage-validation") and not forced.gate["passed"]
    tags = registry.version_tags("3")
    assert (tags["gate.prod"], tags["forced.prod"]) == ("overridden", "gate,stage-validation")
    assert alias("prod") == "3"

    # Nothing to roll back to: said so, nothing changed.
    with pytest.raises(Refused, match="no previous deployment"):
        rollback(env, "prod")
    assert target.describe("prod").serving.name == "churn-v3"

    # A deployment whose predictions differ fails validation: deleted, the slot still serves A.
    monkeypatch.setattr(LocalTarget, "server_command", imposter_command("wrong"))
    with pytest.raises(Refused, match="differ from the offline predictions") as refused:
        release(env, "stage", "B")
    assert "traffic untouched" in str(refused.value)
    monkeypatch.undo()
    stage = target.describe("stage")
    assert [deployment.name for deployment in stage.deployments] == ["churn-v1"]
    assert stage.serving.name == "churn-v1" and alias("stage") == "1"
    assert served(env, "stage", rows.head(5)) == offline("1", rows.head(5))
    failed = registry.last_validation("stage")
    assert (failed["version"], failed["passed"], failed["mismatches"]) == ("2", False, env.validation.rows)
    assert "validated.stage" not in registry.version_tags("2")

    # A server that errors fails validation on its first request.
    monkeypatch.setattr(LocalTarget, "server_command", imposter_command("error"))
    with pytest.raises(Refused, match="answered 500"):
        release(env, "stage", "B")
    monkeypatch.undo()
    assert [deployment.name for deployment in target.describe("stage").deployments] == ["churn-v1"]

    # Blue/green: B takes the traffic, A stays running for rollback; no request fails meanwhile.
    with Load(env.local.port("stage"), rows.head(5)) as load:
        second = release(env, "stage", "B")
        time.sleep(0.5)  # answers from B too
    assert load.failures() == [] and load.served_by() == ["churn-v1", "churn-v2"] and len(load.answers) > 50
    assert (second.version, second.previous) == ("2", "churn-v1")
    stage = target.describe("stage")
    assert stage.traffic == {"churn-v1": 0, "churn-v2": 100}
    assert all(deployment.healthy for deployment in stage.deployments)
    assert served(env, "stage", rows) == offline("2", rows)

    # Rollback: traffic and alias back to A at once (its server kept running); B is deleted, so a
    # repeated rollback is refused rather than bringing B back.
    b_process = slot_state(env, "stage")["deployments"]["churn-v2"]["process"]
    with Load(env.local.port("stage"), rows.head(5)) as load:
        time.sleep(0.5)
        back = rollback(env, "stage")  # B's server stops right after the switch
        time.sleep(0.5)
    assert load.failures() == [] and load.served_by() == ["churn-v2", "churn-v1"] and len(load.answers) > 10
    assert (back.deployment, back.version, back.rolled_back_from) == ("churn-v1", "1", "churn-v2")
    assert target.describe("stage").traffic == {"churn-v1": 100}
    assert target.describe("stage").previous is None
    assert not local._running(b_process)
    with pytest.raises(Refused, match="no previous deployment"):
        rollback(env, "stage")
    assert alias("stage") == "1"
    assert served(env, "stage", rows) == offline("1", rows)
    assert offline("1", rows) != offline("2", rows)  # the fixture's builds differ, so the check above means something

    # Status: both slots, what serves them, the traffic, the last validation.
    document = status(env)
    stage_status, prod_status = document["slots"]["stage"], document["slots"]["prod"]
    assert stage_status["serving"] == {"deployment": "churn-v1", "version": "1", "build": "A", "state": "Succeeded"}
    assert stage_status["previous"] is None and stage_status["probe"]["answered"] and document["healthy"]
    assert stage_status["last_validation"]["version"] == "2" and stage_status["last_validation"]["passed"]
    assert prod_status["serving"]["build"] == "BAD" and prod_status["traffic"] == {"churn-v3": 100}

    # down: every router and server stops, the ports close, the state goes.
    processes = [slot_state(env, slot)["router"] for slot in ("stage", "prod")] + [
        entry["process"] for slot in ("stage", "prod") for entry in slot_state(env, slot)["deployments"].values()
    ]
    stopped = down(env)
    assert len(stopped) == len(processes) == 4
    assert not any(local._running(process) for process in processes)
    for process in processes:
        with pytest.raises(ProcessLookupError):
            os.killpg(process["pid"], 0)
    assert not port_open(env.local.port("stage")) and not port_open(env.local.port("prod"))
    assert LocalTarget(env).describe("stage") is None
    assert down(env) == []
