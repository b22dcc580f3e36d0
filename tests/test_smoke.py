"""Smoke validation measures the deployment, not the machine: load from a neighbour neither refuses nor passes."""

from __future__ import annotations

import time

import pandas as pd

from config import Validation
from deploy.release.smoke import LATENCY_PASSES, validate

ROWS = pd.DataFrame({"Age": [30, 40, 50, 60]})
BOUND = Validation(rows=4, max_p95_ms=50)


def test_a_pass_slowed_by_a_neighbour_is_timed_again_and_the_best_pass_counts() -> None:
    calls = []

    def busy_then_idle(frame: pd.DataFrame) -> list[int]:
        calls.append(int(frame["Age"].iloc[0]))
        time.sleep(0.12 if len(calls) <= 5 else 0.001)  # the warm-up and the first timed pass share the CPU
        return [1]

    result = validate(busy_then_idle, ROWS, [1, 1, 1, 1], BOUND)
    assert result.passed and result.passes == 2 and result.p95_ms < BOUND.max_p95_ms
    assert len(calls) == 1 + 4 + 4  # warm-up, the checked pass, one timed pass


def test_a_deployment_slow_on_every_pass_still_fails() -> None:
    def slow(frame: pd.DataFrame) -> list[int]:
        time.sleep(0.06)
        return [1]

    result = validate(slow, ROWS, [1, 1, 1, 1], BOUND)
    assert not result.passed and result.passes == LATENCY_PASSES
    assert result.reasons == (f"p95 latency {result.p95_ms:.0f} ms exceeds 50 ms (the best of 3 passes)",)


def test_wrong_answers_are_not_timed_again() -> None:
    calls = []

    def wrong_and_slow(frame: pd.DataFrame) -> list[int]:
        calls.append(1)
        time.sleep(0.06)
        return [0]

    result = validate(wrong_and_slow, ROWS, [1, 1, 1, 1], BOUND)
    assert not result.passed and result.mismatches == 4 and result.passes == 1 and len(calls) == 5
