"""Locks across processes: a file lock locally, a blob lease on Azure (against Azurite, the real emulator).

Holders are real processes: one that waits names the holder and gives up in time; one that was
killed never blocks anyone for long (the kernel drops a flock at once, a lease expires).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.platform.locks import Locks, LockTimeout
from tests.conftest import PROJECT_ROOT, free_port

HOLDER = """
import sys, time
from deploy.platform.locks import Locks
from tests.test_locks import service_client
client = service_client(sys.argv[3], sys.argv[4]) if len(sys.argv) > 3 else None
with Locks(sys.argv[1], service_client=client, lease_seconds=15).hold(sys.argv[2], "slot stage", wait_seconds=0):
    print("held", flush=True)
    time.sleep(600)
"""


def hold_in_process(data_root: str, name: str, *azurite: str) -> subprocess.Popen[str]:
    """A process that takes the lock and keeps it until it is killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, data_root, name, *azurite], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_a_waiter_names_the_holder_and_gives_up_in_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    holder = hold_in_process(str(tmp_path), "slot-stage")
    try:
        started = time.monotonic()
        with pytest.raises(LockTimeout) as refused, Locks(str(tmp_path)).hold("slot-stage", "slot stage",
                                                                                wait_seconds=1.5):
            pytest.fail("the lock was taken twice")
        assert 1.5 <= time.monotonic() - started < 5
        message = str(refused.value)
        assert message.startswith("slot stage is locked by ") and f"(pid {holder.pid}, " in message
        assert "since 20" in message and "nothing changed" in message and "--lock-wait" in message
        assert "waiting for the lock on slot stage, held by" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_does_not_block(tmp_path: Path) -> None:
    holder = hold_in_process(str(tmp_path), "slot-prod")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with Locks(str(tmp_path)).hold("slot-prod", "slot prod", wait_seconds=0) as me:
        assert me.pid == os.getpid()


def test_locks_of_different_slots_do_not_exclude_each_other(tmp_path: Path) -> None:
    locks = Locks(str(tmp_path))
    with locks.hold("slot-stage", "slot stage", wait_seconds=0), locks.hold("slot-prod", "slot prod", wait_seconds=0):
        pass


# --- the blob lease, against Azurite ------------------------------------------------------------------

ACCOUNT = "devstoreaccount1"  # Azurite's account; it is addressed by path, not by host name
DATA_ROOT = f"abfss://churndata@{ACCOUNT}.dfs.core.windows.net"


class EntraToken:
    """An azure-identity credential's shape answering with an Entra-style token for Azure Storage (Azurite's
    basic OAuth checks the issuer, the audience and the lifetime, not the signature)."""

    def get_token(self, *scopes: str, **_: Any) -> Any:
        from azure.core.credentials import AccessToken

        now = int(time.time())
        claims = {"aud": "https://storage.azure.com", "iss": "https://sts.windows.net/tenant-0001/", "iat": now - 60,
                  "nbf": now - 60, "exp": now + 3600, "oid": "deployer-object-id"}
        parts = ({"alg": "none", "typ": "JWT"}, claims)
        token = ".".join(base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=") for part in parts)
        return AccessToken(f"{token}.unsigned", now + 3600)


def service_client(port: str, cert: str) -> Any:
    from azure.storage.blob import BlobServiceClient

    # azure-storage-blob's default API version is newer than Azurite 3.35 knows: it runs with --skipApiVersionCheck.
    return BlobServiceClient(f"https://127.0.0.1:{port}/{ACCOUNT}", credential=EntraToken(), connection_verify=cert)


@pytest.fixture(scope="module")
def azurite(certificate: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    node, azurite_blob = shutil.which("node"), PROJECT_ROOT / "node_modules" / ".bin" / "azurite-blob"
    assert node and azurite_blob.exists(), "make install provides Node and Azurite (package.json)"
    cert, key = certificate
    port = str(free_port())
    log = tmp_path_factory.mktemp("azurite") / "azurite.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [str(azurite_blob), "--blobHost", "127.0.0.1", "--blobPort", port, "--oauth", "basic", "--cert", str(cert),
             "--key", str(key), "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck"],
            stdout=sink, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while "successfully listens" not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    service_client(port, str(cert)).create_container("churndata")
    yield port, str(cert)
    process.terminate()
    process.wait(timeout=10)


def test_a_lease_is_exclusive_and_names_its_holder(azurite: tuple[str, str]) -> None:
    port, cert = azurite
    first = Locks(DATA_ROOT, service_client=service_client(port, cert), lease_seconds=15)
    second = Locks(DATA_ROOT, service_client=service_client(port, cert), lease_seconds=15)
    with first.hold("slot-stage", "slot stage", wait_seconds=0) as me:
        held_twice = second.hold("slot-stage", "slot stage", wait_seconds=1)
        with pytest.raises(LockTimeout, match=rf"slot stage is locked by .*\(pid {me.pid}, "), held_twice:
            pytest.fail("the lease was taken twice")
        blob = service_client(port, cert).get_blob_client("churndata", "locks/slot-stage.lock")
        assert json.loads(blob.get_blob_properties().metadata["holder"])["pid"] == me.pid
    with second.hold("slot-stage", "slot stage", wait_seconds=0):  # released on leaving the block
        pass


@pytest.mark.slow
def test_a_killed_holders_lease_expires_and_the_next_command_proceeds(azurite: tuple[str, str]) -> None:
    port, cert = azurite
    holder = hold_in_process(DATA_ROOT, "slot-prod", port, cert)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    with Locks(DATA_ROOT, service_client=service_client(port, cert), lease_seconds=15).hold(
        "slot-prod", "slot prod", wait_seconds=40
    ):
        waited = time.monotonic() - started
    assert waited < 20  # the dead holder's 15-second lease ran out; nobody had to break it
