"""What a build id and a build source may be: checked before anything starts, locally or on Databricks.

Build ids become folder names (`runs/<build>/`) and MLflow filter values, so they stay plain:
Azure DevOps build numbers (20261126.3), uuids and names like demo-20261126.101500 all fit.
This module imports nothing heavy, so the CLI checks its flags before paying for mlflow.
"""

from __future__ import annotations

import re

from deploy.core.errors import UsageError

BUILD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # used with fullmatch: no trailing newline
BUILD_ID_EXPECTED = "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"
MAX_SOURCE_LENGTH = 500


# `release --build latest` means the newest finished run, so no build may be called that.
LATEST = "latest"


def check_build(build: str, source: str) -> None:
    """UsageError unless `build` and `source` are safe to use as a folder name and a tag.

    An empty value is an error, not "use the default": in a pipeline an empty `$(Build.BuildNumber)`
    would otherwise train or ship the wrong build. Leave the flag out for the default."""
    if not build:
        raise UsageError(f"build id is empty; expected {BUILD_ID_EXPECTED} (leave --build out for a generated id)")
    if build.casefold() == LATEST:
        raise UsageError(f"build id {build!r} is reserved (release --build latest means the newest build); "
                         f"expected another id, {BUILD_ID_EXPECTED}")
    if not BUILD_ID.fullmatch(build):
        raise UsageError(f"build id {build!r} is invalid; expected {BUILD_ID_EXPECTED}")
    if not source:
        raise UsageError("build source is empty; expected e.g. repo@commit (leave --source out for manual)")
    if len(source) > MAX_SOURCE_LENGTH:
        raise UsageError(f"build source must be 1-{MAX_SOURCE_LENGTH} characters, e.g. repo@commit or manual")


def check_release_build(build: str | None) -> None:
    """UsageError unless `build` names a build to release: None or `latest` (the newest), or a build id."""
    if build is None or build == LATEST:
        return
    if not build:
        raise UsageError(f"--build is empty; expected a build id or {LATEST} (leave --build out for the newest build)")
    if not BUILD_ID.fullmatch(build):  # it goes into a search filter: the same rule training applied
        raise UsageError(f"build '{build}' is not a build number; expected {BUILD_ID_EXPECTED} or {LATEST}")
