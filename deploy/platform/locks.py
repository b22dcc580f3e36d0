"""Exclusive locks across processes and machines: one release, rollback or down per slot, one training per build.

A lock lives in the environment's data container, beside the audit trail:

- locally (a folder), an advisory `flock` on `<data root>/locks/<name>.lock`. The kernel drops it
  when its holder exits, however it exits, so a killed command never leaves a stale lock;
- on Azure (`abfss://`), a 60-second lease on the blob `locks/<name>.lock` in the same container,
  renewed every 20 seconds while its holder works. Chosen over an ETag-guarded tag on the online
  endpoint because the endpoint may not exist yet (creating it is what the first release locks),
  an endpoint update is a slow ARM operation that also carries traffic, and a tag has no expiry:
  a lease held by a machine that died ends by itself within a minute.

The holder (who, where, which command, since when) is written into the lock as soon as it is
taken, so a command that has to wait names who holds it, and one that gives up says so in one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy.core.errors import Refused
from deploy.core.report import progress
from deploy.platform import storage

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

LOCKS_FOLDER = "locks"
LEASE_SECONDS = 60  # Azure's longest finite lease (15-60 s); a dead holder's lease ends within this
POLL_SECONDS = 1.0
PROGRESS_SECONDS = 30.0


@dataclass(frozen=True)
class Holder:
    who: str
    host: str
    pid: int
    command: str
    since: str

    @classmethod
    def me(cls) -> Holder:
        return cls(
            who=_user(), host=socket.gethostname(), pid=os.getpid(),
            command=" ".join(["python -m deploy", *sys.argv[1:]])[:200], since=_now(),
        )

    def describe(self) -> str:
        return f"{self.who}@{self.host} (pid {self.pid}, `{self.command}`) since {self.since}"

    @classmethod
    def parse(cls, text: str | None) -> Holder | None:
        try:
            return cls(**json.loads(text or ""))
        except (ValueError, TypeError):
            return None  # taken a moment ago and not yet described, or written by something else


class LockTimeout(Refused):
    """The lock stayed held for the whole wait; nothing was changed."""


class Locks:
    """The locks of one environment, in its data container (`data_root`: a folder or an abfss URI)."""

    def __init__(
        self, data_root: str, credential: TokenCredential | None = None, service_client: Any = None,
        lease_seconds: int = LEASE_SECONDS,
    ):
        self.data_root = data_root
        self._credential = credential
        self._service_client = service_client
        self._lease_seconds = lease_seconds

    @contextlib.contextmanager
    def hold(self, name: str, what: str, *, wait_seconds: float) -> Iterator[Holder]:
        """Hold the lock `name` (e.g. `slot-stage`) for the block.

        Waits up to `wait_seconds` for another holder, with a progress line, then raises LockTimeout
        naming the holder. `what` says what is locked, for those lines ("slot stage")."""
        lock: _FileLock | _BlobLease
        if storage.is_abfss(self.data_root):
            lock = _BlobLease(self.data_root, name, self._credential, self._service_client, self._lease_seconds)
        else:
            lock = _FileLock(Path(self.data_root) / LOCKS_FOLDER / f"{name}.lock")
        me = Holder.me()
        deadline = time.monotonic() + wait_seconds
        announced: float | None = None
        while not lock.try_acquire(me):
            now = time.monotonic()
            holder = lock.holder()
            held_by = holder.describe() if holder else "another command"
            if now >= deadline:
                raise LockTimeout(
                    f"{what} is locked by {held_by}; gave up after waiting {wait_seconds:.0f}s, nothing changed "
                    "(retry when it has finished, or wait longer with --lock-wait SECONDS)"
                )
            if announced is None or now - announced >= PROGRESS_SECONDS:
                progress(f"waiting for the lock on {what}, held by {held_by} (up to {deadline - now:.0f}s more)")
                announced = now
            time.sleep(min(POLL_SECONDS, max(deadline - now, 0.01)))
        try:
            yield me
        finally:
            lock.release()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _FileLock:
    """flock on a file that also holds the holder's description (rewritten by each new holder)."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def try_acquire(self, me: Holder) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(me)).encode(), 0)
        self._fd = fd
        return True

    def holder(self) -> Holder | None:
        try:
            return Holder.parse(self.path.read_text())
        except OSError:
            return None

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # the next reader sees no stale holder
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


class _BlobLease:
    """A renewed lease on `locks/<name>.lock` in the data container; the holder is the blob's metadata."""

    def __init__(
        self, data_root: str, name: str, credential: TokenCredential | None, service_client: Any, lease_seconds: int
    ):
        from azure.storage.blob import BlobServiceClient

        where = storage.parse_abfss(data_root)
        if service_client is None:
            # The container's blob endpoint: leases are a Blob API feature (the dfs host serves ADLS Gen2 paths).
            account_url = where.account_url.replace(".dfs.", ".blob.", 1)
            service_client = BlobServiceClient(account_url, credential=credential)
        path = "/".join(part for part in (where.path.strip("/"), LOCKS_FOLDER, f"{name}.lock") if part)
        self.blob = service_client.get_blob_client(where.container, path)
        self._lease_seconds = lease_seconds
        self._lease: Any = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def try_acquire(self, me: Holder) -> bool:
        from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
        from azure.storage.blob import BlobLeaseClient

        lease = BlobLeaseClient(self.blob)
        for first_time in (True, False):
            try:
                lease.acquire(lease_duration=self._lease_seconds)
                break
            except ResourceNotFoundError:
                if not first_time:
                    raise
                with contextlib.suppress(ResourceExistsError):  # another caller created it a moment ago
                    self.blob.upload_blob(b"", overwrite=False)
            except HttpResponseError as exc:
                if exc.status_code == 409:  # LeaseAlreadyPresent: someone holds it
                    return False
                raise
        self.blob.set_blob_metadata({"holder": json.dumps(asdict(me))}, lease=lease)
        self._lease = lease
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name=f"renew {self.blob.blob_name}", daemon=True)
        self._renewer.start()
        return True

    def holder(self) -> Holder | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            metadata = self.blob.get_blob_properties().metadata or {}
        except ResourceNotFoundError:
            return None
        return Holder.parse(metadata.get("holder"))

    def release(self) -> None:
        if self._lease is None:
            return
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        with contextlib.suppress(Exception):  # an expired lease frees the lock anyway
            self.blob.set_blob_metadata({}, lease=self._lease)
            self._lease.release()
        self._lease = None

    def _renew(self) -> None:
        while not self._stop.wait(self._lease_seconds / 3):
            try:
                self._lease.renew()
            except Exception as exc:  # the lease may be gone: say so loudly, the work itself goes on
                progress(f"warning: could not renew the lease on {self.blob.blob_name}: {exc}")
