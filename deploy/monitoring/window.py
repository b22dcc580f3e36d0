"""The `--window` flag: how far back `monitor` looks, as whole days (`7d`) or hours (`36h`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from deploy.core.errors import UsageError

WINDOW = re.compile(r"([1-9][0-9]{0,3})([dh])")
WINDOW_EXPECTED = "a number of days or hours such as 7d or 36h (1-9999, no spaces)"
MAX_WINDOW = timedelta(days=3660)


@dataclass(frozen=True)
class Window:
    text: str  # as given: 7d
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive: the moment the monitor ran

    def contains(self, moment: datetime) -> bool:
        return self.start <= moment < self.end

    @property
    def first_date(self) -> date:
        """The first scoring date the window covers (a batch scored that day counts)."""
        return self.start.date()

    @property
    def last_date(self) -> date:
        return self.end.date()


def parse_window(text: str, now: datetime | None = None) -> Window:
    """`7d` or `36h` ending at `now` (default: this moment, UTC); anything else is a UsageError."""
    match = WINDOW.fullmatch(text or "")
    if match is None:
        raise UsageError(f"--window {text!r} is invalid; expected {WINDOW_EXPECTED}")
    count, unit = int(match.group(1)), match.group(2)
    length = timedelta(days=count) if unit == "d" else timedelta(hours=count)
    if length > MAX_WINDOW:
        raise UsageError(f"--window {text!r} is longer than {MAX_WINDOW.days} days; expected {WINDOW_EXPECTED}")
    end = (now or datetime.now(UTC)).astimezone(UTC)
    return Window(text, end - length, end)
