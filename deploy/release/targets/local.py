"""The local target (`--env local`): real scoring servers on 127.0.0.1, blue/green behind a stable port.

Per slot:
- a router (`deploy.release.targets.router`) on the slot's stable port, `env.local.port(slot)`;
- one MLflow scoring server (MLflow's own uvicorn command for the model version) per deployment,
  on a free port of its own;
- a state file, `<state_dir>/serving/<slot>.json`, holding the router's and the deployments'
  processes (pid and start time, so a recycled pid is never taken for ours), each deployment's
  version and port, the traffic and the rollback target. The router re-reads it when it changes,
  so moving traffic is an atomic rewrite of that file.

The deployment kept for rollback keeps its server running, as a previous deployment stays
provisioned on Azure ML: a rollback is then only a traffic switch, with no 10 s start. Older
deployments are deleted and their servers stopped, so a slot runs at most two servers; their logs
move to `logs/deleted/` (the newest DELETED_LOGS_KEPT are kept) for a post-mortem. If a server
died anyway (a reboot), `create_deployment` starts it again.

Crashes and damaged records. Every process is recorded in the state file right after it starts,
before anything waits for it. Each also carries its own record from birth: the environment
variable PROCESS_MARKER (state folder, slot, name, version, port), which Linux shows in
/proc/<pid>/environ for as long as the process lives. So this kit's processes are found without
any file: a release adopts (or stops) what an interrupted run left running, a state file that was
deleted is rebuilt from the running processes (the router names the deployment it serves in its
answers' `azureml-model-deployment` header; the rollback target is not known then), and `down`
stops everything this kit started for the environment whatever its files say. A state file that
is damaged (not JSON, or missing what it must hold) is refused by every operation with one line
naming it and what to do.

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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config import PROJECT_ROOT, EnvConfig
from deploy.core.contract import REGISTERED_MODEL
from deploy.core.errors import DeployError, UsageError
from deploy.core.report import heartbeat, progress
from deploy.release.targets import slot_state
from deploy.release.targets.base import STOPPED, SUCCEEDED, DeploymentInfo, EndpointInfo, Target

if TYPE_CHECKING:
    import pandas as pd

SERVER_READY_SECONDS = 180.0
ROUTER_READY_SECONDS = 15.0
STOP_SECONDS = 10.0
REQUEST_TIMEOUT_SECONDS = 60.0
DELETED_LOGS_KEPT = 20  # logs of deleted deployments kept under logs/deleted/, newest first

PROCESS_MARKER = "DEPLOY_LOCAL_PROCESS"  # in the environment of every process this target starts
ROUTER = "router"
DEPLOYMENT_HEADER = "azureml-model-deployment"  # the router names the deployment that answered
TEST_PAUSE = "DEPLOY_TEST_PAUSE"  # test hook, inert unless set: "<point>:<seconds>" sleeps at that point

# Servers this process started, so stopping one also reaps it (no zombie left behind).
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class Running:
    """A live process of this kit, found by its marker."""

    pid: int
    started: str
    slot: str
    name: str  # ROUTER or a deployment name
    version: str | None
    port: int

    @property
    def record(self) -> dict[str, Any]:
        return {"pid": self.pid, "started": self.started}

    @property
    def label(self) -> str:
        return f"{self.slot}/{ROUTER}:{self.port}" if self.name == ROUTER else f"{self.slot}/{self.name}"


class LocalTarget(Target):
    def __init__(self, env: EnvConfig):
        if not env.is_local:
            raise UsageError(f"environment '{env.name}' is not local; the local target serves only --env local")
        self.env = env
        self.root = env.local.state_dir / "serving"
        self._rebuilt_said: set[str] = set()

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
        state = self._load(slot) or slot_state.new(slot, self.env.local.port(slot))
        # What an interrupted run left running is adopted (or stopped), so a re-run converges.
        for leftover in self._adopt(state, _processes_of(self.root, slot)):
            _stop(leftover.record)
            progress(f"  stopped {leftover.label} (pid {leftover.pid}), left running by an interrupted run")
        port = self.env.local.port(slot)
        if _running(state.get("router")) and state["port"] != port:
            _stop(state["router"])  # the configured port changed: a new router on the new one
            state["router"] = None
        if _running(state.get("router")):
            self._save(slot, state)
            self._wait_listening(slot, state["router"], state["port"])
        else:
            state["port"] = port
            self._save(slot, state)  # the router reads this file from its first request on
            self._start_router(slot, state)
        endpoint = self.describe(slot)
        assert endpoint is not None
        return endpoint

    def create_deployment(self, slot: str, name: str, version: str) -> DeploymentInfo:
        state = self._require(slot)
        entry = state["deployments"].get(name)
        log = self._log_path(slot, name)
        if entry and entry["version"] == version and _running(entry.get("process")):
            if not _ready(entry["port"]):  # started by a run that was interrupted while it waited
                with heartbeat(f"waiting for deployment {name}, started earlier, to answer /ping"):
                    _wait_ready(entry["process"], entry["port"], log)
            progress(f"  deployment {name} already runs version {version} on port {entry['port']}; reusing it")
        else:
            if entry:
                _stop(entry.get("process"))
            entry = {"version": version, "port": _free_port(), "process": None}
            progress(f"  starting deployment {name} (version {version}) on 127.0.0.1:{entry['port']}; log {log}")
            command = self.server_command(version, entry["port"])
            marker = self._marker(slot, name, version, entry["port"])
            process = _spawn(command, log, {**self._server_environment(version), PROCESS_MARKER: marker})
            _test_pause("server-spawned")
            entry["process"] = _record(process)
            state["deployments"][name] = entry
            self._save(slot, state)  # recorded before the wait, so `down` or a re-run finds it
            with heartbeat(f"waiting for deployment {name} to answer /ping"):
                _wait_ready(entry["process"], entry["port"], log)
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
        if not _running(state.get("router")):  # e.g. a rollback after a reboot: traffic needs its router
            self.ensure_endpoint(slot)

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
        self._keep_log(slot, name)

    # --- local only ------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Stop every router and server this kit started for the environment, and forget the slots' state.

        It stops what the state files record and what the running processes' markers say is ours, so
        damaged or deleted state files leave nothing running."""
        labelled: dict[int, tuple[str, dict[str, Any]]] = {}  # pid -> (label, record)
        for path in sorted(self.root.glob("*.json")):
            slot = path.stem
            try:
                state = self._read(slot)
            except DeployError:
                progress(f"  {path} is damaged: this slot's processes are found by their markers; the file is removed")
                continue
            for name, entry in (state or {}).get("deployments", {}).items():
                if entry.get("process"):
                    labelled[entry["process"]["pid"]] = (f"{slot}/{name}", entry["process"])
            if state and state.get("router"):
                labelled[state["router"]["pid"]] = (f"{slot}/{ROUTER}:{state['port']}", state["router"])
        for found in _processes_of(self.root):
            labelled.setdefault(found.pid, (found.label, found.record))
        # Deployments before routers; what is stopped is said by its label.
        order = sorted(labelled.values(), key=lambda item: f"/{ROUTER}:" in item[0])
        stopped = [label for label, record in order if _stop(record)]
        for label, _ in order:
            slot, name = label.split("/", 1)
            if not name.startswith(f"{ROUTER}:"):
                self._keep_log(slot, name)
        for path in self.root.glob("*.json"):
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

    # --- processes -------------------------------------------------------------------------------

    def _adopt(self, state: dict[str, Any], found: list[Running], quiet: bool = False) -> list[Running]:
        """Record in `state` the slot's running processes it does not know yet; returns those it cannot take.

        A router is taken when the state has none running on that port; a deployment when the state
        does not have it, or has the same version with its process gone. Others are leftovers."""
        recorded = {entry["process"]["pid"] for entry in state["deployments"].values() if entry.get("process")}
        if state.get("router"):
            recorded.add(state["router"]["pid"])
        leftovers = []
        for process in found:
            if process.pid in recorded:
                continue
            if process.name == ROUTER:
                if not _running(state.get("router")) and process.port == state["port"]:
                    state["router"] = process.record
                    if not quiet:
                        progress(f"  adopted the router of slot {process.slot} (pid {process.pid}), left running "
                                 "by an earlier run")
                else:
                    leftovers.append(process)
                continue
            entry = state["deployments"].get(process.name)
            if entry is None or (entry["version"] == process.version and not _running(entry.get("process"))):
                state["deployments"][process.name] = {"version": process.version, "port": process.port,
                                                      "process": process.record}
                if not quiet:
                    progress(f"  adopted deployment {process.label} (version {process.version}, pid {process.pid}), "
                             "left running by an earlier run")
            else:
                leftovers.append(process)
        return leftovers

    def _start_router(self, slot: str, state: dict[str, Any]) -> None:
        port = state["port"]
        if _port_open(port):
            raise DeployError(
                f"port {port} for slot {slot} is in use by another program (no router of this environment); "
                f"free it or set local.{slot}_port in the environments file"
            )
        log = self._log_path(slot, ROUTER)
        command = [sys.executable, "-m", "deploy.release.targets.router", "--state", str(self._state_file(slot)),
                   "--port", str(port)]
        python_path = os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])
        marker = self._marker(slot, ROUTER, None, port)
        process = _spawn(command, log, {**os.environ, "PYTHONPATH": python_path, PROCESS_MARKER: marker})
        _test_pause("router-spawned")
        state["router"] = _record(process)
        self._save(slot, state)  # recorded before the wait, so `down` or a re-run finds it
        self._wait_listening(slot, state["router"], port)
        progress(f"  slot {slot} listens on {scoring_url(port)}")

    def _wait_listening(self, slot: str, router: dict[str, Any], port: int) -> None:
        deadline = time.monotonic() + ROUTER_READY_SECONDS
        while not _port_open(port):
            if not _running(router) or time.monotonic() > deadline:
                _stop(router)
                raise DeployError(
                    f"the router of slot {slot} did not start on port {port}: {_tail(self._log_path(slot, ROUTER))}"
                )
            time.sleep(0.05)

    def _marker(self, slot: str, name: str, version: str | None, port: int) -> str:
        return json.dumps({"serving": str(self.root), "slot": slot, "name": name, "version": version, "port": port})

    # --- logs ------------------------------------------------------------------------------------

    def _log_path(self, slot: str, name: str) -> Path:
        return self.root / "logs" / f"{slot}-{name}.log"

    def _keep_log(self, slot: str, name: str) -> None:
        """Move a deleted deployment's log to logs/deleted/ (timestamped), keeping the newest DELETED_LOGS_KEPT."""
        log = self._log_path(slot, name)
        if not log.exists():
            return
        kept = self.root / "logs" / "deleted"
        kept.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        os.replace(log, kept / f"{stamp}-{slot}-{name}.log")
        for old in sorted(kept.glob("*.log"), reverse=True)[DELETED_LOGS_KEPT:]:
            old.unlink(missing_ok=True)

    # --- the state file --------------------------------------------------------------------------

    def _state_file(self, slot: str) -> Path:
        return self.root / f"{slot}.json"

    def _load(self, slot: str) -> dict[str, Any] | None:
        """The slot's state from its file; rebuilt from the running processes when the file is missing."""
        state = self._read(slot)
        return state if state is not None else self._rebuild(slot)

    def _read(self, slot: str) -> dict[str, Any] | None:
        path = self._state_file(slot)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise self._damaged(path, f"unreadable: {exc}") from None
        try:
            return slot_state.checked(json.loads(text), slot)
        except ValueError as exc:
            raise self._damaged(path, str(exc).split("\n")[0]) from None

    def _rebuild(self, slot: str) -> dict[str, Any] | None:
        found = _processes_of(self.root, slot)
        if not found:
            return None
        state = slot_state.new(slot, self.env.local.port(slot))
        self._adopt(state, found, quiet=True)  # reported once, below
        serving = _answering_deployment(state["port"]) if _running(state.get("router")) else None
        if serving in state["deployments"]:
            state["traffic"] = {serving: 100}
        if slot not in self._rebuilt_said:
            self._rebuilt_said.add(slot)
            running = ", ".join(f"{process.label} (pid {process.pid})" for process in found)
            progress(f"  {self._state_file(slot)} is missing; rebuilt from this kit's processes still running: "
                     f"{running}; serving: {serving or 'none'}; the rollback target is not known")
        return state

    def _damaged(self, path: Path, reason: str) -> DeployError:
        return DeployError(
            f"the local state file {path} is damaged ({reason}); delete it and run the command again (this "
            f"slot's running router and servers are found without it), or stop everything with "
            f"`python -m deploy down --env {self.env.name}`"
        )

    def _require(self, slot: str) -> dict[str, Any]:
        state = self._load(slot)
        if state is None:
            raise DeployError(f"slot {slot} has no local endpoint yet")
        return state

    def _save(self, slot: str, state: dict[str, Any]) -> None:
        """Write-then-rename, so the router never reads half a file."""
        path = self._state_file(slot)
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        scratch.write_text(json.dumps(state, indent=2, sort_keys=True))
        os.replace(scratch, path)

    # --- the model -------------------------------------------------------------------------------

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


# --- processes ---------------------------------------------------------------------------------------


def _spawn(command: list[str], log: Path, environment: dict[str, str]) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=environment,
            cwd=PROJECT_ROOT, start_new_session=True,  # its own process group: it outlives us, and stops whole
        )
    _children[process.pid] = process
    return process


def _test_pause(point: str) -> None:
    """Tests only: sleep at `point` when TEST_PAUSE names it, so a test can kill -9 a release right there."""
    name, _, seconds = os.environ.get(TEST_PAUSE, "").partition(":")
    if name == point:
        progress(f"  (test pause: {seconds} s at {point})")
        time.sleep(float(seconds))


def _processes_of(serving: Path, slot: str | None = None) -> list[Running]:
    """The live processes this kit started for the state folder `serving` (and `slot`), by their markers.

    Only process-group leaders count (each was started in a session of its own), so a server's own
    children are stopped with it, not listed beside it. Without /proc (not Linux) nothing is found."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            marker = _marker_of(pid)
            if marker is None or marker.get("serving") != str(serving) or (slot and marker.get("slot") != slot):
                continue
            stat = _stat(pid)
            if stat is None or stat[0] == "Z" or stat[2] != str(pid):
                continue
            with contextlib.suppress(KeyError, TypeError, ValueError):
                found.append(Running(pid, stat[19], marker["slot"], marker["name"], marker.get("version"),
                                     int(marker["port"])))
    return sorted(found, key=lambda process: process.pid)


def _marker_of(pid: int) -> dict[str, Any] | None:
    try:
        environment = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = f"{PROCESS_MARKER}=".encode()
    for variable in environment.split(b"\0"):
        if variable.startswith(prefix):
            with contextlib.suppress(ValueError):
                marker = json.loads(variable[len(prefix):])
                return marker if isinstance(marker, dict) else None
    return None


def _answering_deployment(port: int) -> str | None:
    """The deployment a slot's router sends requests to, as its answer to /ping names it."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
            return response.headers.get(DEPLOYMENT_HEADER)
    except (OSError, urllib.error.URLError):
        return None


def _wait_ready(process: dict[str, Any], port: int, log: Path) -> None:
    deadline = time.monotonic() + SERVER_READY_SECONDS
    while not _ready(port):
        if not _running(process):
            child = _children.get(process["pid"])
            code = f" ({child.returncode})" if child is not None and child.returncode is not None else ""
            raise DeployError(f"the scoring server on port {port} exited{code}: {_tail(log)}")
        if time.monotonic() > deadline:
            raise DeployError(f"the scoring server on port {port} did not answer /ping in {SERVER_READY_SECONDS:.0f}s")
        time.sleep(0.2)


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
    """/proc/<pid>/stat after the command name (state, ppid, pgrp, ...), or None without /proc."""
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
    child = _children.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=STOP_SECONDS)  # reap it: the group may have died as a zombie
    return True


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs. Zombies don't count: an orphan's zombie stays
    until its new parent reaps it, and not every init does."""
    child = _children.get(pgid)
    if child is not None:
        child.poll()  # reap our own child
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    try:
        entries = [entry.name for entry in os.scandir("/proc") if entry.name.isdigit()]
    except OSError:
        return True  # no /proc: the signal probe is all there is
    for name in entries:
        stat = _stat(int(name))
        if stat is not None and stat[2] == str(pgid) and stat[0] != "Z":
            return True
    return False


def _tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
