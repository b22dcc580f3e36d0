"""The live suite's offline parts, in `make test`: what it needs, the throwaway environment, the estimate,
and that nothing marked live runs without `-m live`."""

from __future__ import annotations

import subprocess
import sys

from config import load_all, load_environment
from tests.conftest import PROJECT_ROOT, SHIPPED_CONFIG
from tests.live import harness

EVERYTHING = {"terraform": "/usr/bin/terraform", "az": "/usr/bin/az"}


def test_without_confirmation_or_tools_the_suite_says_what_it_needs_in_one_line():
    base = load_environment("dev")
    missing = harness.missing_requirements({}, which=lambda name: None, base=base)
    reason = harness.skip_reason(missing)
    assert "\n" not in reason
    for need in ("LIVE_CONFIRM=yes", "terraform 1.14.x on PATH", "the Azure CLI (az) on PATH", "LIVE_ALLOWED_IPS="):
        assert need in reason


def test_a_signed_out_cli_is_named_and_a_ready_machine_needs_nothing():
    base = load_environment("dev")
    ready = {"LIVE_CONFIRM": "yes", "LIVE_ALLOWED_IPS": "203.0.113.7"}
    signed_out = harness.missing_requirements(ready, which=EVERYTHING.get, signed_in=lambda: False, base=base)
    assert len(signed_out) == 1 and "az login" in signed_out[0]
    assert harness.missing_requirements(ready, which=EVERYTHING.get, signed_in=lambda: True, base=base) == []
    assert harness.missing_requirements({**ready, "LIVE_CONFIRM": "y"}, which=EVERYTHING.get,
                                        signed_in=lambda: True, base=base) != []


def test_the_throwaway_environment_is_disposable_valid_and_apart_from_the_committed_ones(tmp_path):
    base = load_environment("prod")
    prefix = harness.random_prefix()
    assert prefix.startswith("lv") and len(prefix) == 8 and prefix != harness.random_prefix()
    throwaway = harness.write_throwaway(base, SHIPPED_CONFIG, tmp_path, ["203.0.113.7"], prefix)
    environments = load_all(throwaway.config_file)  # every rule of the loader, prefix uniqueness included
    env = environments[throwaway.name]
    assert env.disposable and env.prefix == prefix and env.location == base.location
    assert env.key_vault_allowed_ips == ("203.0.113.7",)
    assert env.state_backend is None and env.federation == ()  # local state; nothing shared with prod's
    assert {name for name in environments if name != throwaway.name} == set(load_all())
    assert throwaway.stack_name == f"churn-{prefix}"


def test_the_estimate_names_cost_time_and_the_confirmation():
    lines = harness.estimate(load_environment("dev"))
    text = "\n".join(lines)
    assert "cost: about $" in text and "time: 60-100 minutes" in text and "LIVE_CONFIRM=yes" in text


def test_a_plain_run_deselects_every_live_test():
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests/live/test_live_environment.py"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert "4 deselected" in result.stdout, result.stdout
    assert result.returncode == 5  # pytest's "no tests ran"
