"""The local slot's request log, read in chunks: `<state_dir>/serving/requests/<slot>.jsonl*`.

The local router (deploy/release/targets/router.py) appends one JSON object per POST /invocations:
`time` (ISO 8601 UTC), `slot`, `deployment`, `version`, `status`, `latency_ms`, `inputs` (the rows as
records, or null when the body did not parse), `outputs` (the answer's predictions, or null) and
`error`. It rotates the file by size: `<slot>.jsonl` holds the newest lines, `<slot>.jsonl.1` the
next older ones, up to `<slot>.jsonl.<N>`. All of them are read, oldest first, `CHUNK_BYTES` at a
time and handed on in batches of about `batch_rows` customers, so memory follows the chunk and not
the log's length.

A chunk is parsed by pyarrow's JSON reader into columns against the router's schema. A chunk it
refuses (a line cut short by a crash, a client's row whose types differ from the model's, answers
that are bare labels) is read again line by line with `json.loads`, which keeps what it can: a line
that is not a JSON object is counted and skipped, never fatal. Both readers give the same batch.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

from deploy.core.contract import CATEGORICAL_FEATURES, DECISION, FEATURES, NUMERIC_FEATURES, PROBABILITY
from deploy.monitoring.window import Window

BATCH_ROWS = 50_000  # customers per batch (a request carries one or many)
CHUNK_BYTES = 8 * 2**20  # read this much of a file at a time (whole lines)
BLOCK_BYTES = 2**20  # pyarrow's block; a longer line sends its chunk to the line-by-line reader
REQUEST_COLUMNS = ("time", "version", "status", "latency_ms", "error", "rows")
REQUEST = "_request"  # in `inputs` and `answers`: the position of the request the row came with


@dataclass
class LogReading:
    """What reading the log found besides the requests themselves."""

    files: int = 0
    lines: int = 0
    unreadable_lines: int = 0
    outside_window: int = 0


@dataclass
class RequestBatch:
    """Logged requests as columns.

    `requests`: one row per request: time (UTC), version (text), status (0 when the log has none),
    latency_ms (NaN when it has none), error (text or None), rows (how many customers it carried).
    `inputs`: one row per customer, the model's features (a key the request lacked is a null).
    `answers`: one row per answer, with the version that gave it and its churn_probability (NaN for
    a bare label)."""

    requests: pd.DataFrame
    inputs: pd.DataFrame
    answers: pd.DataFrame

    def __len__(self) -> int:
        return len(self.requests)


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
    files: list[Path], window: Window, reading: LogReading, batch_rows: int = BATCH_ROWS,
    chunk_bytes: int = CHUNK_BYTES, columnar: bool = True,
) -> Iterator[RequestBatch]:
    """The logged requests inside `window`, oldest first, in batches that carry about `batch_rows` customers.
    `columnar=False` reads every line with json.loads (the reader pyarrow's falls back to)."""
    for path in files:
        reading.files += 1
        try:
            handle = path.open("rb")
        except FileNotFoundError:  # rotated away between listing and opening: its lines moved to the next file
            continue
        with handle:
            for chunk in _whole_lines(handle, chunk_bytes):
                lines = chunk.count(b"\n") + (not chunk.endswith(b"\n"))
                reading.lines += lines
                parsed = (_columns(chunk) if columnar else None) or _line_by_line(chunk)
                reading.unreadable_lines += lines - len(parsed.requests)
                inside = _inside(parsed.requests["time"], window)
                reading.outside_window += int(np.count_nonzero(~inside))
                yield from _batches(_kept(parsed, inside), batch_rows)


def probabilities(batch: RequestBatch, version: str | None) -> tuple[np.ndarray, int]:
    """The churn probabilities `version` answered, and how many of its answers were bare labels.

    The scoring contract's answer is `{"churn_probability": p, "churn": 0|1}` per row; models from before
    it answer a bare label, which says nothing about the distribution of probabilities."""
    answers = batch.answers
    if version is not None:
        answers = answers[answers["version"] == version]
    chances = answers[PROBABILITY].to_numpy(dtype=float)
    found = chances[~np.isnan(chances)]
    return found, len(chances) - len(found)


# --- reading a chunk ---------------------------------------------------------------------------------


def _whole_lines(handle: BinaryIO, size: int) -> Iterator[bytes]:
    """The file `size` bytes at a time, each piece cut after its last newline (a last line without one
    is a write cut short, or still under way, and comes last)."""
    pending = b""
    while block := handle.read(size):
        pending += block
        cut = pending.rfind(b"\n")
        if cut >= 0:
            yield pending[:cut + 1]
            pending = pending[cut + 1:]
    if pending:
        yield pending


def _log_schema() -> Any:
    import pyarrow as pa

    features = [(name, pa.string()) for name in CATEGORICAL_FEATURES]
    features += [(name, pa.float64()) for name in NUMERIC_FEATURES]
    answer = pa.struct([(PROBABILITY, pa.float64()), (DECISION, pa.int64())])
    return pa.schema([
        ("time", pa.string()), ("version", pa.string()), ("status", pa.int64()), ("latency_ms", pa.float64()),
        ("inputs", pa.list_(pa.struct(features))), ("outputs", pa.list_(answer)), ("error", pa.string()),
    ])


def _columns(chunk: bytes) -> RequestBatch | None:
    """The chunk through pyarrow's JSON reader, or None when it refuses any line of it."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    try:
        table = pj.read_json(
            io.BytesIO(chunk), read_options=pj.ReadOptions(use_threads=True, block_size=BLOCK_BYTES),
            parse_options=pj.ParseOptions(explicit_schema=_log_schema(), unexpected_field_behavior="ignore"),
        )
        times = pc.cast(table["time"], pa.timestamp("ms", tz="UTC"))  # refuses a time without its offset
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if times.null_count:  # a line without a time: the line-by-line reader skips it and counts it
        return None
    inputs, outputs = table["inputs"].combine_chunks(), table["outputs"].combine_chunks()
    status = table["status"].to_pandas()
    requests = pd.DataFrame({
        "time": times.to_pandas(), "version": table["version"].to_pandas(),
        "status": status.fillna(0).astype(np.int64), "latency_ms": table["latency_ms"].to_pandas().astype(float),
        "error": table["error"].to_pandas(), "rows": pc.fill_null(pc.list_value_length(inputs), 0).to_numpy(),
    })
    rows = pc.list_flatten(inputs)
    present = rows.is_valid().to_numpy(zero_copy_only=False)
    frame = pd.DataFrame({name: pc.struct_field(rows, name).to_pandas() for name in FEATURES})
    frame[REQUEST] = pc.list_parent_indices(inputs).to_numpy()
    answers_flat = pc.list_flatten(outputs)
    answers = pd.DataFrame({
        REQUEST: pc.list_parent_indices(outputs).to_numpy(),
        PROBABILITY: pc.struct_field(answers_flat, PROBABILITY).to_numpy(zero_copy_only=False).astype(float),
    })
    return RequestBatch(requests, frame[present].reset_index(drop=True), answers)


def _line_by_line(chunk: bytes) -> RequestBatch:
    """The chunk read one line at a time, keeping every line that is a JSON object with a time in UTC."""
    requests, inputs, answers = [], [], []
    lines = chunk.split(b"\n")
    if chunk.endswith(b"\n"):
        lines.pop()  # what follows the last newline is no line
    for line in lines:  # newlines only: str.splitlines would also cut at a \r or a \u2028 inside a line
        request = _parsed(line.decode("utf-8", errors="replace"))
        if request is None:
            continue
        position = len(requests)
        status = request.get("status")
        latency = request.get("latency_ms")
        rows = request.get("inputs")
        error = request.get("error")
        requests.append((
            request["_time"], str(request.get("version")), status if isinstance(status, int) else 0,
            float(latency) if isinstance(latency, int | float) else np.nan, str(error) if error else None,
            len(rows) if isinstance(rows, list) else 0,
        ))
        if isinstance(rows, list):
            inputs += [{**row, REQUEST: position} for row in rows if isinstance(row, dict)]
        outputs = request.get("outputs")
        if isinstance(outputs, list):
            answers += [(position, _probability(answer)) for answer in outputs]
    frame = pd.DataFrame.from_records(inputs, columns=[*FEATURES, REQUEST])
    return RequestBatch(
        pd.DataFrame.from_records(requests, columns=list(REQUEST_COLUMNS)), frame,
        pd.DataFrame.from_records(answers, columns=[REQUEST, PROBABILITY]),
    )


def _parsed(line: str) -> dict[str, Any] | None:
    try:
        request = json.loads(line)
        moment = datetime.fromisoformat(request["time"])
    except (ValueError, TypeError, KeyError, RecursionError):
        return None
    if not isinstance(request, dict) or moment.tzinfo is None:
        return None
    request["_time"] = pd.Timestamp(moment).tz_convert("UTC")
    return request


def _probability(answer: Any) -> float:
    chance = answer.get(PROBABILITY) if isinstance(answer, dict) else None
    return float(chance) if isinstance(chance, int | float) and not isinstance(chance, bool) else np.nan


# --- the window and the batches ----------------------------------------------------------------------


def _inside(times: pd.Series, window: Window) -> np.ndarray:
    if times.empty:
        return np.zeros(0, dtype=bool)
    moments = pd.to_datetime(times, utc=True)
    return ((moments >= pd.Timestamp(window.start)) & (moments <= pd.Timestamp(window.end))).to_numpy()


def _kept(parsed: RequestBatch, inside: np.ndarray) -> RequestBatch:
    """The requests inside the window, renumbered 0..n-1, with their rows and answers."""
    renumbered = np.cumsum(inside) - 1

    def of_kept(frame: pd.DataFrame) -> pd.DataFrame:
        owners = frame[REQUEST].to_numpy(dtype=np.int64)
        kept = frame[inside[owners]] if len(frame) else frame
        return kept.assign(**{REQUEST: renumbered[kept[REQUEST].to_numpy(dtype=np.int64)]})

    return RequestBatch(parsed.requests[inside].reset_index(drop=True), of_kept(parsed.inputs),
                        of_kept(parsed.answers))


def _batches(parsed: RequestBatch, batch_rows: int) -> Iterator[RequestBatch]:
    """Consecutive runs of requests, each closed by the request that brings it to `batch_rows` customers."""
    if not len(parsed):
        return
    carried = np.maximum(parsed.requests["rows"].to_numpy(), 1)
    ends, total = [], 0
    for position, count in enumerate(carried):
        total += int(count)
        if total >= batch_rows:
            ends.append(position + 1)
            total = 0
    if not ends or ends[-1] != len(carried):
        ends.append(len(carried))
    input_owner = parsed.inputs[REQUEST].to_numpy(dtype=np.int64)
    answer_owner = parsed.answers[REQUEST].to_numpy(dtype=np.int64)
    versions = parsed.requests["version"].to_numpy(dtype=object)
    start = 0
    for end in ends:
        rows = slice(*np.searchsorted(input_owner, [start, end]))
        answered = slice(*np.searchsorted(answer_owner, [start, end]))
        answers = parsed.answers.iloc[answered]
        yield RequestBatch(
            parsed.requests.iloc[start:end].reset_index(drop=True),
            parsed.inputs.iloc[rows][list(FEATURES)].reset_index(drop=True),
            pd.DataFrame({"version": versions[answers[REQUEST].to_numpy(dtype=np.int64)],
                          PROBABILITY: answers[PROBABILITY].to_numpy(dtype=float)}),
        )
        start = end
