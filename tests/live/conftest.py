"""The opt-in live suite (`make live-test ENV=<env>`, pytest `-m live`), deselected from every other run.

The estimate of what a run costs is the report header, printed before anything is created; each live
test is then skipped, with one line naming what is missing, unless the machine has everything it needs
and LIVE_CONFIRM=yes says the user accepts the cost.
"""

from __future__ import annotations

import os

import pytest

from config import ConfigError, load_environment
from tests.live import harness


def _selected(config: pytest.Config) -> bool:
    expression = config.getoption("markexpr") or ""
    return "live" in expression and "not live" not in expression


def _base():
    return load_environment(os.environ.get(harness.BASE_VARIABLE, "dev"))


def pytest_report_header(config: pytest.Config) -> list[str]:
    if not _selected(config):
        return []
    try:
        return harness.estimate(_base())
    except ConfigError as exc:
        return [f"live suite: {exc}"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    live = [item for item in items if item.get_closest_marker("live")]
    if not live or not _selected(config):
        return  # deselected by `-m "not live"` (pyproject.toml), as in `make test`
    try:
        missing = harness.missing_requirements(os.environ, base=_base())
    except ConfigError as exc:
        missing = [f"a valid {harness.BASE_VARIABLE} ({exc})"]
    if missing:
        skip = pytest.mark.skip(reason=harness.skip_reason(missing))
        for item in live:
            item.add_marker(skip)
