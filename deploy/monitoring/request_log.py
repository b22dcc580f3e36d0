"""The local slot's request log, read in chunks: `<state_dir>/serving/requests/<slot>.jsonl*`.

The local router (deploy/release/targets/router.py) appends one JSON object per POST /invocations:
`time` (ISO 8601 UTC), `slot`, `deployment`, `version`, `status`, `latency_ms`, `inputs` (the rows as
records, or null when the body did not parse), `outputs` (the answer's predictions, or null) and
`error`. It rotates the file by size: `<slot>.jsonl` holds the newest lines, `<slot>.jsonl.1` the
next older ones, up to `<slot>.jsonl.<N>`. All of them are read, oldest first, in batches of about
`batch_rows` customers, so memory follows the batch size and not the log's length. A line that is not a JSON object
(a write cut short by a crash) is counted and skipped, never fatal.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from deploy.core.contract import PROBABILITY
from deploy.monitoring.window import Window

BATCH_ROWS = 50_000  # customers per batch (a request carries one or many)


@dataclass
class LogReading:
    """What reading the log found besides the requests themselves."""

    files: int = 0
    lines: int = 0
    unreadable_lines: int = 0
    outside_window: int = 0


def requests_folder(state_dir: Path) -> Path:
    return state_dir / "serving" / "requests"


def log_files(state_dir: Path, slot: str) -> list[Path]:
    """The slot's log and its rotated files, oldest first (`.jsonl.3`, `.jsonl.2`, `.jsonl.1`, `.jsonl`)."""
    folder = requests_folder(state_dir)
    current = folder / f"{slot}.jsonl"

    def age(path: Path) -> int:
        suffix = path.name.removeprefix(current.name).lstrip(".")
        return int(suffix) if suffix.isdigit() else 0

    rotated = [path for path in folder.glob(f"{slot}.jsonl.*") if path.name.removeprefix(current.name)[1:].isdigit()]
    files = sorted(rotated, key=age, reverse=True)
    return [*files, current] if current.is_file() else files


def read_requests(
    files: list[Path], window: Window, reading: LogReading, batch_rows: int = BATCH_ROWS
) -> Iterator[list[dict[str, Any]]]:
    """The logged requests inside `window`, in batches that carry about `batch_rows` customers."""
    batch: list[dict[str, Any]] = []
    rows = 0
    for path in files:
        reading.files += 1
        try:
            handle = path.open(encoding="utf-8", errors="replace")
        except FileNotFoundError:  # rotated away between listing and opening: its lines moved to the next file
            continue
        with handle:
            for line in handle:
                reading.lines += 1
                request = _parsed(line)
                if request is None:
                    reading.unreadable_lines += 1
                    continue
                if not window.contains(request["_time"]):
                    reading.outside_window += 1
                    continue
                batch.append(request)
                rows += len(request["inputs"]) if isinstance(request.get("inputs"), list) else 1
                if rows >= batch_rows:
                    yield batch
                    batch, rows = [], 0
    if batch:
        yield batch


def _parsed(line: str) -> dict[str, Any] | None:
    try:
        request = json.loads(line)
        moment = datetime.fromisoformat(request["time"])
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    if not isinstance(request, dict) or moment.tzinfo is None:
        return None
    request["_time"] = moment
    return request


def input_records(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every row the requests carried (a request whose body did not parse carries none)."""
    return [row for request in requests if isinstance(request.get("inputs"), list)
            for row in request["inputs"] if isinstance(row, dict)]


def input_columns(requests: list[dict[str, Any]], columns: tuple[str, ...]) -> pd.DataFrame:
    """The requests' rows as a frame of `columns` (a missing key is a null, other keys are left out)."""
    return pd.DataFrame.from_records(input_records(requests), columns=list(columns))


def probabilities(requests: list[dict[str, Any]], version: str | None) -> tuple[list[float], int]:
    """The churn probabilities `version` answered, and how many of its answers were bare labels.

    The scoring contract's answer is `{"churn_probability": p, "churn": 0|1}` per row; models from before
    it answer a bare label, which says nothing about the distribution of probabilities."""
    found: list[float] = []
    labels = 0
    for request in requests:
        outputs = request.get("outputs")
        if not isinstance(outputs, list) or (version is not None and str(request.get("version")) != version):
            continue
        for answer in outputs:
            if isinstance(answer, dict) and isinstance(answer.get(PROBABILITY), int | float):
                found.append(float(answer[PROBABILITY]))
            else:
                labels += 1
    return found, labels
