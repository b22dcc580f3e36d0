"""How commands talk: human progress on stderr, machine-readable results as one JSON object on stdout."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


_emitted = threading.Event()


def emit_json(document: dict[str, Any]) -> None:
    """The command's one JSON object on stdout."""
    print(json.dumps(document, indent=2, sort_keys=True, default=str), flush=True)
    _emitted.set()


def start_command() -> None:
    """A new command in this process (the CLI's entry point; tests call it several times) has printed nothing."""
    _emitted.clear()


def json_emitted() -> bool:
    """Whether this process already printed its JSON object (a command that reports, then fails, says why in it)."""
    return _emitted.is_set()


@contextmanager
def heartbeat(what: str, every_seconds: float = 15.0) -> Iterator[None]:
    """Print `still <what> (Ns)` to stderr every few seconds while the block runs (long waits)."""
    stop = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        while not stop.wait(every_seconds):
            progress(f"  still {what} ({time.monotonic() - started:.0f}s)")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
