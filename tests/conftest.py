"""Fixtures shared by every test module: a throw-away environments file and a free loopback port."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# Nothing in the suite may leave the machine: MLflow otherwise reports usage to its telemetry host.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _loopback_only(connect: Callable[..., Any]) -> Callable[..., Any]:
    """No test reaches any address but loopback: a connection elsewhere (an SDK's default credential trying
    the instance metadata service, a default endpoint) fails the test at once instead of waiting on the network."""

    def guarded(self: socket.socket, address: Any, *args: Any) -> Any:
        internet = self.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple)
        if internet and address[0] not in LOOPBACK:
            raise ConnectionRefusedError(f"tests may only connect to loopback, not {address[0]}:{address[1]}")
        return connect(self, address, *args)

    return guarded


socket.socket.connect = _loopback_only(socket.socket.connect)  # type: ignore[method-assign]
socket.socket.connect_ex = _loopback_only(socket.socket.connect_ex)  # type: ignore[method-assign]

# The synthesized stacks, once per session, for every module that checks them.
pytest_plugins = ("tests.stack_fixtures",)
SHIPPED_CONFIG = PROJECT_ROOT / "config" / "environments.toml"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Write an environments file into the test's folder and return its path."""

    def write(text: str, name: str = "environments.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture
def local_config(tmp_path: Path) -> Path:
    """An environments file whose `local` environment keeps its state in the test's folder and
    serves on free ports, so tests running side by side never share servers or stores."""
    path = tmp_path / "environments.toml"
    path.write_text(local_config_text(tmp_path / "state"))
    return path


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1, for the local HTTPS fakes of Azure services."""
    from tests.fakes_azure import make_certificate

    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def spark():
    """One local Spark session for the whole suite (it takes seconds to start), the one `score --env local`
    uses: the scoring code finds it running and reuses it."""
    from deploy.scoring.local_spark import local_session

    session = local_session()
    yield session
    session.stop()


def local_config_text(state_dir: Path) -> str:
    """The shipped environments file with `local` keeping its state in `state_dir` and serving on free ports."""
    stage, prod = free_port(), free_port()
    while prod == stage:
        prod = free_port()
    return (
        SHIPPED_CONFIG.read_text().replace('state_dir = ".state/local"', f'state_dir = "{state_dir}"')
        .replace("stage_port = 5301", f"stage_port = {stage}")
        .replace("prod_port = 5302", f"prod_port = {prod}")
    )
