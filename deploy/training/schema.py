"""The churn table's input checks: a bad CSV fails here, before any training, with one line naming the column.

The checks cover what the model and the audit trail rely on: every feature column and the label
present, numeric columns numeric, no missing values, a 0/1 label with both classes. The
identifier columns (RowNumber, CustomerId, Surname) are optional, since training drops them.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from deploy.core.contract import CATEGORICAL_FEATURES, COLUMNS, FEATURES, LABEL, NUMERIC_FEATURES
from deploy.core.errors import UsageError

REQUIRED_COLUMNS = (*FEATURES, LABEL)
# Rows a stratified 80/20 split and a 3-fold search need at the very least.
MIN_ROWS_PER_CLASS = 5


def read_churn_csv(source: str | Path, text: str | None = None) -> pd.DataFrame:
    """Read and check a churn CSV from a path, or from `text` already fetched from `source`.

    Returns the frame with the label as int and the categorical features as str.
    """
    if text is None:
        try:
            text = Path(source).read_text()
        except FileNotFoundError:
            raise UsageError(f"churn CSV {source} not found; expected a file with columns {', '.join(COLUMNS)}") \
                from None
        except IsADirectoryError:
            raise UsageError(f"churn CSV {source} is a directory; expected a CSV file") from None
        except UnicodeDecodeError:
            raise UsageError(f"churn CSV {source} is not UTF-8 text; expected a CSV file") from None
    _check_header(text, str(source))
    try:
        frame = pd.read_csv(io.StringIO(text), dtype={name: str for name in ("Surname", *CATEGORICAL_FEATURES)})
    except pd.errors.EmptyDataError:
        raise UsageError(f"churn CSV {source} is empty; expected a header ({', '.join(COLUMNS)}) and rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise UsageError(f"churn CSV {source} is not a readable CSV: {_first_line(exc)}") from None
    return check_churn_frame(frame, str(source))


def _check_header(text: str, source: str) -> None:
    """A column named twice would be read as `Age` and `Age.1`, and the model would train on one of them."""
    header = next(csv.reader(io.StringIO(text)), [])
    seen: set[str] = set()
    for name in (column.strip() for column in header):
        if name in seen:
            raise UsageError(f"churn CSV {source}: column {name} appears twice on line 1; expected each column once")
        seen.add(name)


def check_churn_frame(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check a churn table already in memory (see the module docstring); returns a typed copy."""
    missing = [name for name in COLUMNS if name in REQUIRED_COLUMNS and name not in frame.columns]
    if missing:
        raise UsageError(
            f"churn CSV {source} lacks column {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f"; expected columns {', '.join(COLUMNS)}"
        )
    if frame.empty:
        raise UsageError(f"churn CSV {source} has a header but no rows; expected customer rows")
    frame = frame.copy()
    for name in REQUIRED_COLUMNS:
        _check_no_missing(frame, name, source)
    for name in (*NUMERIC_FEATURES, LABEL):
        frame[name] = _numeric(frame[name], name, source)
    for name in CATEGORICAL_FEATURES:
        frame[name] = frame[name].astype(str)
    not_binary = ~frame[LABEL].isin((0, 1))
    if not_binary.any():
        row = int(not_binary.to_numpy().nonzero()[0][0])
        raise UsageError(
            f"churn CSV {source}: column {LABEL} holds {frame[LABEL].iloc[row]} on line {row + 2}; expected 0 or 1"
        )
    frame[LABEL] = frame[LABEL].astype(int)
    counts = frame[LABEL].value_counts()
    if min(counts.get(0, 0), counts.get(1, 0)) < MIN_ROWS_PER_CLASS:
        raise UsageError(
            f"churn CSV {source}: column {LABEL} has {counts.get(1, 0)} churned and {counts.get(0, 0)} retained rows; "
            f"expected at least {MIN_ROWS_PER_CLASS} of each"
        )
    return frame


def _check_no_missing(frame: pd.DataFrame, name: str, source: str) -> None:
    empty = frame[name].isna()
    if empty.any():
        row = int(empty.to_numpy().nonzero()[0][0]) + 2  # +1 for the header, +1 for counting from 1
        raise UsageError(f"churn CSV {source}: column {name} is empty on line {row}; expected a value in every row")


def _numeric(column: pd.Series, name: str, source: str) -> pd.Series:
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        converted = column
    else:
        converted = pd.to_numeric(column, errors="coerce")
    not_numbers = converted.isna()
    # inf, -inf and 1e400 (which overflows to inf) parse as numbers, but no customer has an infinite balance.
    infinite = ~not_numbers & ~np.isfinite(converted.astype(float))
    for bad, expected in ((not_numbers, "a number"), (infinite, "a finite number")):
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            value = column.iloc[row]
            # The parser has already turned "inf" and 1e400 into infinity; say what that covers.
            shown = "an infinite value (inf, or a number too large such as 1e400)" if expected != "a number" else (
                repr(value)
            )
            raise UsageError(f"churn CSV {source}: column {name} holds {shown} on line {row + 2}; expected {expected}")
    return converted


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
