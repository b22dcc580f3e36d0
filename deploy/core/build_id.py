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


def check_build(build: str, source: str) -> None:
    """UsageError unless `build` and `source` are safe to use as a folder name and a tag."""
    if not BUILD_ID.fullmatch(build):
        raise UsageError(f"build id {build!r} is invalid; expected {BUILD_ID_EXPECTED}")
    if not source or len(source) > MAX_SOURCE_LENGTH:
        raise UsageError(f"build source must be 1-{MAX_SOURCE_LENGTH} characters, e.g. repo@commit or manual")
