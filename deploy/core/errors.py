"""The errors the CLI turns into one line and an exit status (no traceback unless --debug)."""

from __future__ import annotations

# Exit statuses, shared by every command.
OK = 0
REFUSED = 1  # a gate, a validation or a failed step refused; what was serving still serves
USAGE = 2  # bad input or configuration: nothing was changed
INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class DeployError(Exception):
    """A failure the user can act on; its message is one line that names what is wrong."""

    exit_status = REFUSED


class UsageError(DeployError):
    """Bad input: an unknown build, a missing outputs file, a malformed CSV, a bad flag combination."""

    exit_status = USAGE


class Refused(DeployError):
    """A quality gate or a validation said no. Nothing serving was changed."""

    exit_status = REFUSED
