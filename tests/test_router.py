"""The local slot's router, as a real process on 127.0.0.1, spoken to in raw HTTP/1.1 over a socket.

Behind it stand small scoring servers in this process (http.server threads) that answer like
MLflow's (`/ping`, `/invocations` -> `{"predictions": [...]}`) and record what reached them, so
each test sees both sides of the router. The router runs with short timeouts and small limits
(its command-line options) so that a slow client or a slow deployment takes a second, not a minute.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from deploy.release.targets import router
from tests.conftest import PROJECT_ROOT, free_port

READ_TIMEOUT = 1.0
UPSTREAM_TIMEOUT = 1.0
MAX_BODY = 2000
BODY = {"dataframe_split": {"columns": ["Age", "Geography"], "data": [[42, "France"], [30, "Spain"]]}}


class Deployment:
    """A scoring server that answers like MLflow's; `mode` is ok, slow (past the router's timeout) or error."""

    def __init__(self, mode: str = "ok"):
        self.mode = mode
        self.bodies: list[bytes] = []
        deployment = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer(200, b"\n")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                deployment.bodies.append(body)
                if deployment.mode == "slow":
                    time.sleep(UPSTREAM_TIMEOUT * 3)
                if deployment.mode == "error":
                    self._answer(400, b'{"error_code": "BAD_REQUEST", "message": "Invalid input. No column Age"}')
                    return
                rows = router.rows_of(self.headers["Content-Type"], body) or []
                self._answer(200, json.dumps({"predictions": [row["Age"] % 2 for row in rows]}).encode())

            def _answer(self, status: int, body: bytes) -> None:
                with_broken_pipe_ignored(lambda: self._write(status, body))

            def _write(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def with_broken_pipe_ignored(action: Any) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the router gave up on a slow answer
        action()


class Slot:
    """A state file and the router process serving it."""

    def __init__(self, folder: Path, *options: str):
        self.serving = folder / "serving"
        self.serving.mkdir(parents=True, exist_ok=True)
        self.state_file = self.serving / "stage.json"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.options = options

    def route(self, traffic: dict[str, int], **deployments: tuple[str, int]) -> None:
        """Rewrite the state file atomically, as the local target does: deployments name -> (version, port)."""
        state = {
            "slot": "stage", "port": self.port, "router": None, "previous": None, "traffic": traffic,
            "deployments": {name: {"version": version, "port": port, "process": None}
                            for name, (version, port) in deployments.items()},
        }
        scratch = self.state_file.with_suffix(".tmp")
        scratch.write_text(json.dumps(state))
        os.replace(scratch, self.state_file)

    def start(self) -> None:
        command = [
            sys.executable, "-m", "deploy.release.targets.router", "--state", str(self.state_file),
            "--port", str(self.port), "--read-timeout", str(READ_TIMEOUT), "--upstream-timeout",
            str(UPSTREAM_TIMEOUT), "--max-body-bytes", str(MAX_BODY), *self.options,
        ]
        self.process = subprocess.Popen(command, cwd=PROJECT_ROOT, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.process.poll() is None, self.process.stderr.read().decode()  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "the router did not listen within 15 s"
                time.sleep(0.02)

    def stop(self) -> str:
        """Stop the router; returns what it wrote on stderr."""
        assert self.process is not None
        self.process.terminate()
        _, errors = self.process.communicate(timeout=15)
        # uvicorn shuts down gracefully, then exits by the signal it caught
        assert self.process.returncode in (0, -signal.SIGTERM), errors.decode()
        return errors.decode()

    def request_log(self, entries: int) -> list[dict[str, Any]]:
        """The slot's request log once it holds `entries` records: the router writes a record after it answered."""
        path = self.serving / "requests" / "stage.jsonl"
        deadline = time.monotonic() + 10
        while True:
            lines = path.read_text().splitlines() if path.exists() else []
            if len(lines) >= entries or time.monotonic() > deadline:
                return sorted((json.loads(line) for line in lines), key=lambda entry: entry["time"])
            time.sleep(0.02)


@pytest.fixture
def deployment() -> Iterator[Deployment]:
    server = Deployment()
    yield server
    server.stop()


@pytest.fixture
def slot(tmp_path: Path, deployment: Deployment) -> Iterator[Slot]:
    serving = Slot(tmp_path)
    serving.route({"churn-v1": 100}, **{"churn-v1": ("1", deployment.port)})
    serving.start()
    yield serving
    serving.stop()


# --- raw HTTP ------------------------------------------------------------------------------------------


class Reply:
    def __init__(self, raw: bytes):
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines[0] else 0
        self.headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}

    def json(self) -> Any:
        assert self.headers.get("content-type") == "application/json", self.raw
        return json.loads(self.body)


def exchange(port: int, data: bytes, pause: float = 0.0, rest: bytes = b"", timeout: float = 10.0) -> Reply:
    """Send `data` (then, after `pause`, `rest`), and read the answer until the router closes or it is complete."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(data)
        if pause:
            time.sleep(pause)
        if rest:
            connection.sendall(rest)
        return Reply(read_answer(connection, head_only=data.startswith(b"HEAD")))


def read_answer(connection: socket.socket, head_only: bool = False) -> bytes:
    received = b""
    while True:
        if b"\r\n\r\n" in received:
            head, _, body = received.partition(b"\r\n\r\n")
            length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
            if head_only or (length and len(body) >= int(length.group(1))):
                return received
        chunk = connection.recv(65536)
        if not chunk:
            return received
        received += chunk


def post(path: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", *headers]
    if not any(header.lower().startswith(("content-length", "transfer-encoding")) for header in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(body: bytes, size: int = 7) -> bytes:
    pieces = [body[start:start + size] for start in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


def closed_by_peer(connection: socket.socket) -> bool:
    try:
        return connection.recv(1) == b""
    except ConnectionResetError:
        return True


# --- what MLflow's scoring server accepts ---------------------------------------------------------------


def test_a_chunked_body_reaches_the_deployment_whole(slot: Slot, deployment: Deployment) -> None:
    body = json.dumps(BODY).encode()
    reply = exchange(slot.port, post("/invocations", b"", "Transfer-Encoding: chunked") + chunked(body))
    assert reply.status == 200 and reply.json() == {"predictions": [0, 0]}
    assert reply.headers["azureml-model-deployment"] == "churn-v1"
    assert deployment.bodies == [body]


def test_keep_alive_serves_several_requests_on_one_connection(slot: Slot, deployment: Deployment) -> None:
    body = json.dumps(BODY).encode()
    with socket.create_connection(("127.0.0.1", slot.port), timeout=10) as connection:
        for _ in range(3):
            connection.sendall(post("/invocations", body))
            assert Reply(read_answer(connection)).status == 200
    assert len(deployment.bodies) == 3


@pytest.mark.parametrize("length", ["abc", "-1", "1e3", "12, 13"])
def test_a_bad_content_length_is_a_json_400_at_once(slot: Slot, deployment: Deployment, length: str) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", slot.port), timeout=10) as connection:
        connection.sendall(post("/invocations", b"{}", f"Content-Length: {length}"))
        reply = Reply(read_answer(connection))
        assert closed_by_peer(connection)
    assert time.monotonic() - started < READ_TIMEOUT  # answered, not left to time out
    assert reply.status == 400 and reply.headers["connection"] == "close"
    answer = reply.json()
    assert answer["error_code"] == "BAD_REQUEST"
    assert answer["message"].startswith("malformed HTTP/1.1 request:") and "Content-Length" in answer["message"]
    assert deployment.bodies == []


def test_broken_chunking_is_a_json_400(slot: Slot) -> None:
    reply = exchange(slot.port, post("/invocations", b"", "Transfer-Encoding: chunked") + b"zz\r\n{}\r\n0\r\n\r\n")
    assert reply.status == 400 and reply.json()["error_code"] == "BAD_REQUEST"


def test_an_oversize_body_is_refused_with_413(slot: Slot, deployment: Deployment) -> None:
    declared = exchange(slot.port, post("/invocations", b"", f"Content-Length: {MAX_BODY * 1000}"))
    assert declared.status == 413 and declared.json()["error_code"] == "REQUEST_TOO_LARGE"
    assert declared.headers["connection"] == "close"
    oversize = chunked(b"x" * (MAX_BODY + 1), 500)
    streamed = exchange(slot.port, post("/invocations", b"", "Transfer-Encoding: chunked") + oversize)
    assert streamed.status == 413 and f"limit of {MAX_BODY} bytes" in streamed.json()["message"]
    assert deployment.bodies == []


def test_head_get_and_the_methods_mlflow_does_not_serve(slot: Slot) -> None:
    head = exchange(slot.port, b"HEAD /ping HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head.status == 200 and head.body == b"" and head.headers["content-length"] == "1"
    assert exchange(slot.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").status == 200
    for request, allowed in [
        (b"PUT /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", "POST"),
        (b"GET /invocations HTTP/1.1\r\nHost: x\r\n\r\n", "POST"),
        (b"HEAD /invocations HTTP/1.1\r\nHost: x\r\n\r\n", "POST"),
        (b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", "GET, HEAD"),
        (b"DELETE /version HTTP/1.1\r\nHost: x\r\n\r\n", "GET, HEAD"),
    ]:
        reply = exchange(slot.port, request)
        assert (reply.status, reply.headers["allow"]) == (405, allowed), request
        if not request.startswith(b"HEAD"):
            assert reply.json()["error_code"] == "METHOD_NOT_ALLOWED"
    missing = exchange(slot.port, b"GET /score HTTP/1.1\r\nHost: x\r\n\r\n")
    assert missing.status == 404 and missing.json()["error_code"] == "ENDPOINT_NOT_FOUND"


def test_a_post_without_a_length_is_411(slot: Slot) -> None:
    reply = exchange(slot.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n")
    assert reply.status == 411 and reply.json()["error_code"] == "LENGTH_REQUIRED"


def test_a_deployment_error_is_passed_on_as_it_answered(slot: Slot, deployment: Deployment) -> None:
    deployment.mode = "error"
    reply = exchange(slot.port, post("/invocations", b'{"dataframe_records": [{"Tenure": 1}]}'))
    assert reply.status == 400 and reply.json()["message"] == "Invalid input. No column Age"
    assert reply.headers["azureml-model-deployment"] == "churn-v1"


# --- slow clients, and deployments that are down or slow -----------------------------------------------


def test_a_slow_client_gets_408_and_does_not_hold_up_others(slot: Slot) -> None:
    results: dict[str, Reply] = {}

    def stall(name: str, data: bytes) -> None:
        results[name] = exchange(slot.port, data)

    body = json.dumps(BODY).encode()
    stalled = [
        threading.Thread(target=stall, args=("silent", b"")),
        threading.Thread(target=stall, args=("head", b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-")),
        threading.Thread(target=stall, args=("body", post("/invocations", body[:5], f"Content-Length: {len(body)}"))),
    ]
    started = time.monotonic()
    for thread in stalled:
        thread.start()
    served = exchange(slot.port, post("/invocations", body))
    assert served.status == 200 and time.monotonic() - started < READ_TIMEOUT
    for thread in stalled:
        thread.join(timeout=READ_TIMEOUT * 5)
    assert time.monotonic() - started >= READ_TIMEOUT
    for name in ("silent", "head", "body"):
        assert results[name].status == 408, name
        assert results[name].json()["error_code"] == "REQUEST_TIMEOUT"
        assert results[name].headers["connection"] == "close"


def test_a_body_that_arrives_in_time_is_served(slot: Slot) -> None:
    body = json.dumps(BODY).encode()
    head = post("/invocations", b"", f"Content-Length: {len(body)}")
    reply = exchange(slot.port, head + body[:10], pause=READ_TIMEOUT / 3, rest=body[10:])
    assert reply.status == 200


def test_deployment_down_slow_or_absent_are_json_502_504_503(tmp_path: Path, deployment: Deployment) -> None:
    slow = Deployment("slow")
    down_port = free_port()  # nothing listens there
    serving = Slot(tmp_path)
    serving.route({"churn-v1": 100}, **{"churn-v1": ("1", down_port)})
    serving.start()
    try:
        body = post("/invocations", json.dumps(BODY).encode())
        refused = exchange(serving.port, body)
        assert refused.status == 502 and refused.json()["error_code"] == "BAD_GATEWAY"
        assert "churn-v1" in refused.json()["message"] and refused.headers["azureml-model-deployment"] == "churn-v1"

        serving.route({"churn-v2": 100}, **{"churn-v2": ("2", slow.port)})
        started = time.monotonic()
        timed_out = exchange(serving.port, body)
        assert timed_out.status == 504 and timed_out.json()["error_code"] == "GATEWAY_TIMEOUT"
        assert UPSTREAM_TIMEOUT <= time.monotonic() - started < UPSTREAM_TIMEOUT * 3

        serving.route({}, **{"churn-v2": ("2", slow.port)})
        nobody = exchange(serving.port, body)
        assert nobody.status == 503 and nobody.json()["error_code"] == "SERVICE_UNAVAILABLE"
        assert exchange(serving.port, b"HEAD /ping HTTP/1.1\r\nHost: x\r\n\r\n").status == 503

        failed = serving.request_log(3)
        assert [(entry["status"], entry["deployment"]) for entry in failed] == [
            (502, "churn-v1"), (504, "churn-v2"), (503, None)
        ]
        assert all(entry["error"] and entry["outputs"] is None for entry in failed)
    finally:
        serving.stop()
        slow.stop()


# --- moving traffic, and a damaged or missing state file ---------------------------------------------------


def test_traffic_moves_with_the_state_file_and_survives_its_damage(slot: Slot, deployment: Deployment) -> None:
    second = Deployment()
    try:
        body = post("/invocations", json.dumps(BODY).encode())
        assert exchange(slot.port, body).headers["azureml-model-deployment"] == "churn-v1"
        slot.route({"churn-v2": 100}, **{"churn-v1": ("1", deployment.port), "churn-v2": ("2", second.port)})
        assert exchange(slot.port, body).headers["azureml-model-deployment"] == "churn-v2"
        for damage in ("garbage{", "{}", '{"traffic": {"churn-v9": 100}, "deployments": {}}'):
            slot.state_file.write_text(damage)
            reply = exchange(slot.port, body)
            assert (reply.status, reply.headers["azureml-model-deployment"]) == (200, "churn-v2"), damage
        slot.state_file.unlink()
        assert exchange(slot.port, body).headers["azureml-model-deployment"] == "churn-v2"
        assert len(second.bodies) == 5
        access = (slot.serving / "logs" / "stage-router-access.log").read_text()
        assert "keeping the previous routes" in access
    finally:
        second.stop()


# --- the request log ----------------------------------------------------------------------------------


def test_the_request_log_records_each_scoring_request_as_documented(slot: Slot, deployment: Deployment) -> None:
    records = [{"Age": 42, "Geography": "France"}, {"Age": 30, "Geography": "Spain"}]
    forms = [
        json.dumps(BODY),
        json.dumps({"dataframe_records": records}),
        json.dumps({"inputs": {"Age": [42, 30], "Geography": ["France", "Spain"]}}),
        json.dumps({"instances": records}),
    ]
    for form in forms:
        exchange(slot.port, post("/invocations", form.encode()))
    deployment.mode = "error"
    exchange(slot.port, post("/invocations", b"Age,Geography\n42,France\n30,Spain\n", "Content-Type: text/csv"))
    exchange(slot.port, post("/invocations", b"not json"))
    exchange(slot.port, b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")  # not a scoring request: not in the log

    log = slot.request_log(6)
    assert len(log) == 6
    for entry in log:
        assert list(entry) == ["time", "slot", "deployment", "version", "status", "latency_ms", "inputs", "outputs",
                               "error"]
        assert entry["time"].endswith("+00:00") and entry["slot"] == "stage"
        assert (entry["deployment"], entry["version"]) == ("churn-v1", "1")
        assert isinstance(entry["latency_ms"], float) and entry["latency_ms"] > 0
    assert [entry["inputs"] for entry in log[:5]] == [records] * 5  # every form, CSV included, as records
    assert [(entry["outputs"], entry["error"]) for entry in log[:4]] == [([0, 0], None)] * 4
    assert [entry["status"] for entry in log] == [200, 200, 200, 200, 400, 400]
    assert log[4]["outputs"] is None and log[4]["error"] == "BAD_REQUEST: Invalid input. No column Age"
    assert log[5]["inputs"] is None  # not parseable: logged, with no rows


def test_the_request_log_rotates_and_stays_bounded(tmp_path: Path, deployment: Deployment) -> None:
    serving = Slot(tmp_path, "--request-log-max-bytes", "1500", "--access-log-max-bytes", "1500")
    serving.route({"churn-v1": 100}, **{"churn-v1": ("1", deployment.port)})
    serving.start()
    try:
        body = post("/invocations", json.dumps(BODY).encode())
        with socket.create_connection(("127.0.0.1", serving.port), timeout=10) as connection:
            for _ in range(80):
                connection.sendall(body)
                assert Reply(read_answer(connection)).status == 200
        time.sleep(0.2)  # the last line is written just after its answer
    finally:
        serving.stop()
    requests = sorted((serving.serving / "requests").iterdir())
    assert [path.name for path in requests] == ["stage.jsonl"] + [
        f"stage.jsonl.{number}" for number in range(1, router.REQUEST_LOG_BACKUPS + 1)
    ]
    assert all(path.stat().st_size <= 1500 for path in requests)
    for path in requests:
        assert all(json.loads(line)["status"] == 200 for line in path.read_text().splitlines())
    newest, older = (json.loads(path.read_text().splitlines()[-1])["time"] for path in requests[:2])
    assert newest >= older
    access = sorted(path.name for path in (serving.serving / "logs").iterdir())
    assert access == ["stage-router-access.log"] + [
        f"stage-router-access.log.{number}" for number in range(1, router.ACCESS_LOG_BACKUPS + 1)
    ]


def test_a_logging_failure_never_fails_a_request(tmp_path: Path, deployment: Deployment) -> None:
    serving = Slot(tmp_path, "--request-log-max-bytes", "300")
    serving.route({"churn-v1": 100}, **{"churn-v1": ("1", deployment.port)})
    requests = serving.serving / "requests"
    requests.mkdir()
    # Rotation must remove the oldest file, which is a folder here: every rotation fails (root may write anywhere).
    (requests / f"stage.jsonl.{router.REQUEST_LOG_BACKUPS - 1}").write_text("{}\n")
    (requests / f"stage.jsonl.{router.REQUEST_LOG_BACKUPS}").mkdir()
    serving.start()
    try:
        body = post("/invocations", json.dumps(BODY).encode())
        assert [exchange(serving.port, body).status for _ in range(5)] == [200] * 5
    finally:
        errors = serving.stop()
    assert len(deployment.bodies) == 5
    assert "Logging error" in errors and "IsADirectoryError" in errors  # it failed, and said so on stderr


def test_rows_of_normalises_what_mlflow_accepts() -> None:
    assert router.rows_of("application/json", b'{"dataframe_split": {"columns": ["a"], "data": [[1], [2]]}}') == [
        {"a": 1}, {"a": 2}
    ]
    assert router.rows_of("application/json", b'{"inputs": [[1, 2]]}') is None  # a tensor has no column names
    assert router.rows_of("application/json", b"[" * 100_000) is None
    assert router.rows_of("application/json", b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1]]}}') is None
    assert router.rows_of("text/csv; charset=utf-8", b"a,b\n1,x\n2.5,\n") == [{"a": 1, "b": "x"}, {"a": 2.5, "b": ""}]
    assert router.rows_of("application/json", None) is None
    assert router.predictions_of(b'{"predictions": [1, 0]}') == [1, 0] and router.predictions_of(b"[1]") is None


def test_the_router_keeps_up_with_the_state_file_between_requests(slot: Slot, deployment: Deployment) -> None:
    """A switch no request has seen yet is still the one served after the file is damaged."""
    second = Deployment()
    try:
        slot.route({"churn-v2": 100}, **{"churn-v1": ("1", deployment.port), "churn-v2": ("2", second.port)})
        time.sleep(router.STATE_POLL_SECONDS * 2)
        slot.state_file.write_text("garbage{")
        reply = exchange(slot.port, post("/invocations", json.dumps(BODY).encode()))
        assert (reply.status, reply.headers["azureml-model-deployment"]) == (200, "churn-v2")
    finally:
        second.stop()
