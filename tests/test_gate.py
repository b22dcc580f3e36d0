"""The gate can't be fooled: corrupted labels, a champion that cannot be read, a rolled-back version, a foreign
scikit-learn. Each refusal comes before anything is deployed (the serving target only answers `describe`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from config import EnvConfig, load_environment
from deploy.core.errors import Refused, UsageError
from deploy.release import registry
from deploy.release.rollout import release
from tests.release_doubles import ServedBy
from tests.rollout_fixtures import log_build


@pytest.fixture
def env(local_config: Path) -> EnvConfig:
    return load_environment("local", local_config)


def champion(env: EnvConfig, build: str = "champion") -> ServedBy:
    """A good build registered as version 1, which prod serves."""
    log_build(env, build, seed=1)
    assert registry.register(registry.find_run(build)) == "1"
    return ServedBy("1")


def test_a_model_trained_and_tested_on_inverted_labels_is_refused(env: EnvConfig) -> None:
    prod = champion(env)
    log_build(env, "flipped", "corrupted", seed=2)
    with pytest.raises(Refused, match="the data or its labels changed") as refused:
        release(env, "stage", "flipped", target=prod)
    assert "the slot still serves what it served" in str(refused.value)
    detail = json.loads(registry.version_tags("2")["gate.stage.detail"])
    # On its own (equally inverted) test set the candidate looks good; nothing else does.
    assert detail["auc"] > env.gate.min_auc
    assert detail["prod_reference_auc"] > env.gate.min_auc  # the champion on its own test set ...
    assert detail["prod_auc"] < 0.5  # ... and on the candidate's: far below
    assert detail["reference_auc"] < 0.5  # the candidate on the champion's (fixed, correct) test set
    assert detail["prod_version"] == "1" and not detail["passed"]
    assert registry.version_tags("2")["gate.stage"] == "failed"


def test_an_equally_good_build_passes_against_the_champion_on_both_test_sets(env: EnvConfig) -> None:
    prod = champion(env)
    log_build(env, "next", seed=2)
    with pytest.raises(AssertionError, match="went past the gate"):  # the gate passed; the target stops it here
        release(env, "stage", "next", target=prod)
    detail = json.loads(registry.version_tags("2")["gate.stage.detail"])
    assert detail["passed"] and detail["prod_version"] == "1"
    assert abs(detail["prod_reference_auc"] - detail["prod_auc"]) < env.gate.max_champion_drop
    assert abs(detail["reference_auc"] - detail["prod_reference_auc"]) < env.gate.max_auc_drop


def test_the_first_release_passes_on_the_threshold_alone(env: EnvConfig) -> None:
    log_build(env, "first", seed=1)
    with pytest.raises(AssertionError, match="went past the gate"):
        release(env, "stage", "first", target=ServedBy(None))
    detail = json.loads(registry.version_tags("1")["gate.stage.detail"])
    assert detail["passed"] and detail["prod_version"] is None and detail["reference_auc"] is None


class Throttled(ServedBy):
    def describe(self, slot: str) -> None:
        from azure.core.exceptions import HttpResponseError

        raise HttpResponseError(message="(TooManyRequests) Rate limit exceeded")


def test_an_error_reading_prod_stops_the_release_instead_of_skipping_the_comparison(env: EnvConfig) -> None:
    from azure.core.exceptions import HttpResponseError

    log_build(env, "weak", "weak", seed=3)  # above the threshold, so a skipped comparison would pass it
    with pytest.raises(HttpResponseError, match="Rate limit"):
        release(env, "stage", "weak", target=Throttled(None))
    assert "gate.stage" not in registry.version_tags("1")


def test_a_version_rolled_back_from_a_slot_needs_force_there(env: EnvConfig) -> None:
    prod = champion(env)
    log_build(env, "again", seed=2)
    registry.tag_version(registry.register(registry.find_run("again")), {"validated.prod": "rolled-back",
                                                                        "validated.stage": "true"})
    with pytest.raises(Refused, match="was rolled back from prod; release another build, or --force"):
        release(env, "prod", "again", target=prod)
    with pytest.raises(AssertionError, match="went past the gate"):
        release(env, "prod", "again", target=prod, force=True)
    assert registry.version_tags("2")["forced.prod"] == "rolled-back"


def test_a_model_built_with_another_scikit_learn_minor_is_refused_naming_it(env: EnvConfig) -> None:
    log_build(env, "foreign", seed=1)
    run = registry.find_run("foreign")
    requirements = Path(run.info.artifact_uri.removeprefix("file://")) / "model" / "requirements.txt"
    requirements.write_text("mlflow==3.17.2\nscikit-learn==0.24.2\npandas==1.5.3\n")
    with pytest.raises(Refused, match=r"scikit-learn 0\.24\.2 \(here 1\.\d+\.\d+\), pandas 1\.5\.3 \(here") as refused:
        release(env, "stage", "foreign", target=ServedBy(None))
    assert "\n" not in str(refused.value)
    assert "gate.stage" not in registry.version_tags("1")


@pytest.mark.parametrize("build", ["", "no such/build"])
def test_an_empty_or_malformed_build_is_bad_input(env: EnvConfig, build: str) -> None:
    log_build(env, "present", seed=1)
    with pytest.raises(UsageError, match=r"--build is empty|is not a build number"):
        release(env, "stage", build, target=ServedBy(None))


def test_a_build_with_two_finished_runs_says_how_to_recover(env: EnvConfig) -> None:
    log_build(env, "doubled", seed=1)
    log_build(env, "doubled", seed=2)  # what two trainings at once left behind before builds were locked
    with pytest.raises(UsageError, match=r"2 finished runs .*\(python -m deploy train --build doubled --force"):
        release(env, "stage", "doubled", target=ServedBy(None))
