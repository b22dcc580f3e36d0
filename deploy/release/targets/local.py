"""The local target (`--env local`): real scoring servers on 127.0.0.1, blue/green behind a stable port.

Per slot:
- a router (`deploy.release.targets.router`) on the slot's stable port, `env.local.port(slot)`;
- one MLflow scoring server (MLflow's own uvicorn command for the model version) per deployment,
  on a free port of its own;
- a state file, `<state_dir>/serving/<slot>.json`, holding the router's and the deployments'
  processes (pid and start time, so a recycled pid is never taken for ours), each deployment's
  version and port, the traffic and the rollback target. The router reads it per request, so moving traffic is an
  atomic rewrite of that file.

The deployment kept for rollback keeps its server running, as a previous deployment stays
provisioned on Azure ML: a rollback is then only a traffic switch, with no 10 s start. Older
deployments are deleted and their servers stopped, so a slot runs at most two servers. If a
server died anyway (a reboot), `create_deployment` starts it again.

Servers run detached (their own session) and outlive the command; `down` stops them all.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config import PROJECT_ROOT, EnvConfig
from deploy.core.contract import REGISTERED_MODEL
from deploy.core.errors import DeployError, UsageError
from deploy.core.report import heartbeat, progress
from deploy.release.targets.base import STOPPED, SUCCEEDED, DeploymentInfo, EndpointInfo, Target

if TYPE_CHECKING:
    import pandas as pd

SERVER_READY_SECONDS = 180.0
ROUTER_READY_SECONDS = 15.0
STOP_SECONDS = 10.0
REQUEST_TIMEOUT_SECONDS = 60.0

# Servers this process started, so stopping one also reaps it (no zombie left behind).
_children: dict[int, subprocess.Popen[bytes]] = {}


class LocalTarget(Target):
    def __init__(self, env: EnvConfig):
        if not env.is_local:
            raise UsageError(f"environment '{env.name}' is not local; the local target serves only --env local")
        self.env = env
        self.root = env.local.state_dir / "serving"

    # --- the interface ---------------------------------------------------------------------------

    def describe(self, slot: str) -> EndpointInfo | None:
        state = self._load(slot)
        if state is None:
            return None
        deployments = tuple(
            DeploymentInfo(
                name=name,
                version=entry["version"],
                traffic=state["traffic"].get(name, 0),
                state=SUCCEEDED if _running(entry.get("process")) else STOPPED,
            )
            for name, entry in sorted(state["deployments"].items())
        )
        return EndpointInfo(
            name=self.env.endpoint_name(slot),
            url=scoring_url(state["port"]),
            state=SUCCEEDED if _running(state.get("router")) else STOPPED,
            deployments=deployments,
            previous=state.get("previous"),
        )

    def ensure_endpoint(self, slot: str) -> EndpointInfo:
        state = self._load(slot) or {
            "slot": slot, "port": self.env.local.port(slot), "router": None,
            "deployments": {}, "traffic": {}, "previous": None,
        }
        if not _running(state.get("router")):
            state["port"] = self.env.local.port(slot)
            self._save(slot, state)  # the router reads this file from its first request on
            state["router"] = self._start_router(slot, state["port"])
            self._save(slot, state)
        endpoint = self.describe(slot)
        assert endpoint is not None
        return endpoint

    def create_deployment(self, slot: str, name: str, version: str) -> DeploymentInfo:
        state = self._require(slot)
        entry = state["deployments"].get(name)
        if entry and entry["version"] == version and _serving(entry):
            progress(f"  deployment {name} already runs version {version} on port {entry['port']}; reusing it")
        else:
            if entry:
                _stop(entry.get("process"))
            entry = {"version": version, "port": _free_port(), "process": None}
            log = self._log_path(slot, name)
            progress(f"  starting deployment {name} (version {version}) on 127.0.0.1:{entry['port']}; log {log}")
            command = self.server_command(version, entry["port"])
            process = _spawn(command, log, self._server_environment(version))
            entry["process"] = _record(process)
            state["deployments"][name] = entry
            self._save(slot, state)  # recorded before the wait, so `down` or a re-run finds it
            with heartbeat(f"waiting for deployment {name} to answer /ping"):
                _wait_ready(process, entry["port"], log)
        return DeploymentInfo(name, version, state["traffic"].get(name, 0), SUCCEEDED)

    def invoke_deployment(self, slot: str, name: str, rows: pd.DataFrame) -> list[Any]:
        entry = self._require(slot)["deployments"].get(name)
        if entry is None:
            raise DeployError(f"slot {slot} has no deployment {name}")
        document = score(entry["port"], rows)
        return document["predictions"]

    def invoke_slot(self, slot: str, rows: pd.DataFrame) -> list[Any]:
        return score(self._require(slot)["port"], rows)["predictions"]

    def switch_traffic(self, slot: str, to: str, previous: str | None) -> None:
        state = self._require(slot)
        if to not in state["deployments"]:
            raise DeployError(f"slot {slot} has no deployment {to} to switch traffic to")
        state["traffic"] = {to: 100}
        state["previous"] = previous if previous in state["deployments"] and previous != to else None
        self._save(slot, state)

    def delete_deployment(self, slot: str, name: str) -> None:
        state = self._load(slot)
        if state is None or name not in state["deployments"]:
            return
        if state["traffic"].get(name, 0) > 0:
            raise DeployError(f"deployment {name} of slot {slot} takes traffic; switch it away before deleting it")
        _stop(state["deployments"].pop(name).get("process"))
        state["traffic"].pop(name, None)
        if state.get("previous") == name:
            state["previous"] = None
        self._save(slot, state)
        self._log_path(slot, name).unlink(missing_ok=True)

    # --- local only ------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Stop every router and server of this environment and forget the slots' state."""
        stopped = []
        for path in sorted(self.root.glob("*.json")):
            state = json.loads(path.read_text())
            for name, entry in state["deployments"].items():
                if _stop(entry.get("process")):
                    stopped.append(f"{state['slot']}/{name}")
            if _stop(state.get("router")):
                stopped.append(f"{state['slot']}/router:{state['port']}")
            path.unlink()
        shutil.rmtree(self.root / "models", ignore_errors=True)
        return stopped

    def server_command(self, version: str, port: int) -> list[str]:
        """MLflow's own scoring-server command for the version, the one `mlflow models serve --env-manager
        local` runs, started directly: going through `mlflow models serve` imports MLflow once more
        before uvicorn starts (about 3 s of every release)."""
        from mlflow.pyfunc import scoring_server

        command, _ = scoring_server.get_cmd(str(self._model_path(version)), port=port, host="127.0.0.1", nworkers=1)
        program, *arguments = shlex.split(command)  # "uvicorn --host ... mlflow.pyfunc.scoring_server.app:app"
        return [sys.executable, "-m", program, *arguments]

    # --- helpers ---------------------------------------------------------------------------------

    def _server_environment(self, version: str) -> dict[str, str]:
        from mlflow.pyfunc import scoring_server

        _, environment = scoring_server.get_cmd(str(self._model_path(version)))  # os.environ + the model path
        return {**environment, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}

    def _model_path(self, version: str) -> Path:
        """The registered version's model files, copied once under the state folder (`down` removes
        them): the server reads them for as long as it runs, and stage and prod share one copy."""
        folder = self.root / "models" / version
        found = next(folder.rglob("MLmodel"), None)
        if found is None:
            import mlflow  # pointed at this environment's registry by the release or rollback calling us

            uri = f"models:/{REGISTERED_MODEL}/{version}"
            downloaded = mlflow.artifacts.download_artifacts(uri, dst_path=str(folder))
            found = next(Path(downloaded).rglob("MLmodel"))
        return found.parent

    def _start_router(self, slot: str, port: int) -> dict[str, Any]:
        if _port_open(port):
            raise DeployError(
                f"port {port} for slot {slot} is in use by another program; "
                f"free it or set local.{slot}_port in the environments file"
            )
        log = self._log_path(slot, "router")
        command = [sys.executable, "-m", "deploy.release.targets.router", "--state", str(self._state_file(slot)),
                   "--port", str(port)]
        python_path = os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])
        environment = {**os.environ, "PYTHONPATH": python_path}
        process = _spawn(command, log, environment)
        deadline = time.monotonic() + ROUTER_READY_SECONDS
        while not _port_open(port):
            if process.poll() is not None or time.monotonic() > deadline:
                _stop(_record(process))
                raise DeployError(f"the router of slot {slot} did not start on port {port}: {_tail(log)}")
            time.sleep(0.05)
        progress(f"  slot {slot} listens on {scoring_url(port)}")
        return _record(process)

    def _state_file(self, slot: str) -> Path:
        return self.root / f"{slot}.json"

    def _log_path(self, slot: str, name: str) -> Path:
        return self.root / "logs" / f"{slot}-{name}.log"

    def _load(self, slot: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._state_file(slot).read_text())
        except FileNotFoundError:
            return None

    def _require(self, slot: str) -> dict[str, Any]:
        state = self._load(slot)
        if state is None:
            raise DeployError(f"slot {slot} has no local endpoint yet")
        return state

    def _save(self, slot: str, state: dict[str, Any]) -> None:
        """Write-then-rename, so the router never reads half a file."""
        path = self._state_file(slot)
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(".tmp")
        scratch.write_text(json.dumps(state, indent=2, sort_keys=True))
        os.replace(scratch, path)


def scoring_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/invocations"


def score(port: int, rows: pd.DataFrame) -> dict[str, Any]:
    """POST `rows` to a local MLflow scoring server (or a slot's router) and return its JSON answer."""
    payload = json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}).encode()
    request = urllib.request.Request(  # noqa: S310 - an http URL on loopback, built here
        scoring_url(port), data=payload, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode(errors="replace")
        raise DeployError(f"127.0.0.1:{port} answered {exc.code}: {detail}") from None


def _spawn(command: list[str], log: Path, environment: dict[str, str]) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=environment,
            cwd=PROJECT_ROOT, start_new_session=True,  # its own process group: it outlives us, and stops whole
        )
    _children[process.pid] = process
    return process


def _wait_ready(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + SERVER_READY_SECONDS
    while not _ready(port):
        if process.poll() is not None:
            raise DeployError(f"the scoring server on port {port} exited ({process.returncode}): {_tail(log)}")
        if time.monotonic() > deadline:
            raise DeployError(f"the scoring server on port {port} did not answer /ping in {SERVER_READY_SECONDS:.0f}s")
        time.sleep(0.2)


def _serving(entry: dict[str, Any]) -> bool:
    return _running(entry.get("process")) and _ready(entry["port"])


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _record(process: subprocess.Popen[bytes]) -> dict[str, Any]:
    """What the state file keeps of a process: its pid, and its start time to tell it from a recycled pid."""
    return {"pid": process.pid, "started": _start_time(process.pid)}


def _start_time(pid: int) -> str:
    stat = _stat(pid)
    return stat[19] if stat else ""  # field 22 of /proc/<pid>/stat: start time in clock ticks since boot


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (its first item is the state), or None without /proc."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _running(process: dict[str, Any] | None) -> bool:
    """Whether the recorded process is alive and still the one we started."""
    if not process:
        return False
    pid = process["pid"]
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    stat = _stat(pid)
    if stat is None:
        return True  # no /proc to ask (not Linux): trust the state file
    return stat[0] != "Z" and stat[19] == process["started"]


def _stop(process: dict[str, Any] | None) -> bool:
    """Stop the process group the recorded process leads (mlflow runs uvicorn as a child). True if it ran."""
    if not _running(process):
        return False
    assert process is not None
    pid = process["pid"]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + STOP_SECONDS
        while _group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _group_alive(pid):
            break
    _children.pop(pid, None)
    return True


def _group_alive(pgid: int) -> bool:
    child = _children.get(pgid)
    if child is not None:
        child.poll()  # reap our own child, or its zombie keeps the group alive
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
