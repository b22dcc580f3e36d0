"""What a scoring run is asked for (model version or slot, scoring date, input), checked up front.

Imports nothing heavy: the CLI checks its flags with it before Spark or MLflow is imported, and
the notebook checks its widgets with it, so a bad value is one line and exit 2 either way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime

from config.naming import SLOTS
from deploy.core.errors import UsageError

DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
VERSION = re.compile(r"[1-9][0-9]{0,9}")
DEFAULT_SLOT = "prod"


@dataclass(frozen=True)
class ScoringRequest:
    scoring_date: str  # YYYY-MM-DD: the partition the run writes
    version: str | None  # a model version; None: the one `slot` serves
    slot: str
    input: str | None  # the customer table; None: the data container's churn table

    @property
    def by_slot(self) -> bool:
        return self.version is None


def scoring_request(
    scoring_date: str | None = None, version: str | None = None, slot: str | None = None, input: str | None = None
) -> ScoringRequest:
    """Check and complete a request; empty strings (a notebook's empty widgets) mean "not given"."""
    return ScoringRequest(
        scoring_date=check_date(scoring_date),
        version=check_version(version),
        slot=check_slot(slot),
        input=(input or "").strip() or None,
    )


def check_date(text: str | None) -> str:
    """The scoring date as YYYY-MM-DD; empty: today in UTC."""
    text = (text or "").strip()
    if not text:
        return datetime.now(UTC).date().isoformat()
    if not DATE.fullmatch(text):
        raise UsageError(f"scoring date {text!r} is invalid; expected YYYY-MM-DD, e.g. 2026-12-01")
    try:
        date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"scoring date {text!r} is not a calendar date; expected YYYY-MM-DD") from None
    return text


def check_version(text: str | None) -> str | None:
    text = (text or "").strip()
    if not text:
        return None
    if not VERSION.fullmatch(text):
        raise UsageError(f"model version {text!r} is invalid; expected a registered version number, e.g. 3")
    return text


def check_slot(text: str | None) -> str:
    text = (text or "").strip() or DEFAULT_SLOT
    if text not in SLOTS:
        raise UsageError(f"slot {text!r} is invalid; expected one of {', '.join(SLOTS)}")
    return text
