"""The stable front door of a local slot: `python -m deploy.release.targets.router --state FILE --port N`.

Each local deployment is MLflow's scoring server on a port of its own; the slot's URL stays the
same because this router listens on the slot's port and forwards each request to the deployment
the slot's state file (`<serving>/<slot>.json`) gives the traffic to. A release or a rollback moves
traffic by rewriting that file atomically: the router looks at the file's identity (inode, size,
mtime) on every request and re-reads it when it changed, with no restart and no signal. A damaged
or deleted file changes nothing: the router keeps the last table it could read, so the slot serves
on while the local target reports the damage.

HTTP is uvicorn's (h11), the server MLflow's own scoring server runs on; this module is a small
ASGI app on it, with the upstream call made by http.client on a thread pool (no second HTTP client
library, and the router starts in a fraction of a second). uvicorn's protocol class is extended in
two places only: its own 400 answers (malformed HTTP: a bad or negative Content-Length, broken
chunking) are JSON like the router's, and a request's head must arrive within the read timeout
(uvicorn would wait for ever on a client that connects and stalls).

What it serves, as MLflow's scoring server does: GET (or HEAD) /ping, /health, /version and POST
/invocations, with a Content-Length or a chunked body. Every answer from the deployment is passed
on with its status and Content-Type, plus `azureml-model-deployment: <deployment>` naming who
answered (the header Azure ML's endpoints send). Every error the router produces itself is JSON in
MLflow's error shape, `{"error_code": ..., "message": ...}`:

    400 BAD_REQUEST            malformed HTTP (from the protocol)
    404 ENDPOINT_NOT_FOUND     a path MLflow does not serve
    405 METHOD_NOT_ALLOWED     e.g. PUT /invocations or GET /invocations (with an Allow header)
    408 REQUEST_TIMEOUT        the request's head or body did not arrive within READ_TIMEOUT_SECONDS
    411 LENGTH_REQUIRED        POST without Content-Length or chunked encoding
    413 REQUEST_TOO_LARGE      a body over MAX_BODY_BYTES (refused from its Content-Length when declared)
    500 INTERNAL_ERROR         a defect in the router itself
    502 BAD_GATEWAY            the serving deployment refused the connection or broke it
    503 SERVICE_UNAVAILABLE    no deployment of the slot takes traffic
    504 GATEWAY_TIMEOUT        the deployment did not answer within UPSTREAM_TIMEOUT_SECONDS

A connection the deployment refused before anything was sent is retried once when the state file
names another deployment by then: a rollback stops the rolled-back server right after the switch,
and a request that chose it a moment before must not fail.

Logs, both rotated by size (logging.handlers.RotatingFileHandler), next to the state file:
- the access log `<serving>/logs/<slot>-router-access.log` (ACCESS_LOG_MAX_BYTES, ACCESS_LOG_BACKUPS):
  one line per request and uvicorn's own warnings;
- the request log `<serving>/requests/<slot>.jsonl` (REQUEST_LOG_MAX_BYTES, REQUEST_LOG_BACKUPS),
  read by the monitoring: every POST /invocations, answered or failed, as one JSON object per line.
  The newest lines are in `<slot>.jsonl`; older files are `<slot>.jsonl.1` (newer) to
  `<slot>.jsonl.<REQUEST_LOG_BACKUPS>` (oldest). Each object has exactly these keys:

    time        ISO 8601 UTC time the request arrived, e.g. "2026-12-01T09:30:00.123+00:00"
    slot        "stage" or "prod"
    deployment  the deployment the request went to, e.g. "churn-v3" (null when it went to none:
                refused by the router, or no deployment took traffic)
    version     that deployment's model version, e.g. "3" (or null)
    status      the HTTP status the router answered
    latency_ms  milliseconds from the request's head to the answer, through the router (float)
    inputs      the request's rows as a list of records (column -> value), from MLflow's
                `dataframe_split`, `dataframe_records`, `inputs` or `instances` (columnar or records)
                JSON forms, or a CSV body (numbers parsed, other values as strings); null when the
                body was not read or not in one of those forms
    outputs     the answer's `predictions` list, or null
    error       a short string for a failed request (status >= 400, e.g. "BAD_REQUEST: ..."), else null

  Appending a line costs one write and a size check; a logging failure never fails a request.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import http.client
import io
import json
import logging
import logging.handlers
import os
import random
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from deploy.release.targets import slot_state

MAX_BODY_BYTES = 8 * 1024 * 1024  # a request body; scoring requests are rows, batches go through Spark
MAX_HEAD_BYTES = 16 * 1024  # request line and headers (h11's bound)
READ_TIMEOUT_SECONDS = 30.0  # for a request's head, and again for its body
UPSTREAM_TIMEOUT_SECONDS = 75.0  # per connect or read; MLflow's server gives up on a request after 60 s itself
STATE_POLL_SECONDS = 1.0  # the state file is also looked at this often between requests
UPSTREAM_THREADS = 32  # concurrent requests forwarded at once; more wait for a thread
KEEP_ALIVE_SECONDS = 5  # an idle client connection is closed after this
SHUTDOWN_SECONDS = 5  # on SIGTERM, in-flight requests get this long to finish

ACCESS_LOG_MAX_BYTES = 1024 * 1024
ACCESS_LOG_BACKUPS = 3
REQUEST_LOG_MAX_BYTES = 16 * 1024 * 1024
REQUEST_LOG_BACKUPS = 4
ERROR_TEXT_CHARACTERS = 300  # of an `error` in the request log

DEPLOYMENT_HEADER = "azureml-model-deployment"
FORWARDED_HEADERS = ("content-type", "accept")
ROUTES = {"/ping": ("GET", "HEAD"), "/health": ("GET", "HEAD"), "/version": ("GET", "HEAD"), "/invocations": ("POST",)}
SCORING_PATH = "/invocations"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

access_log = logging.getLogger("deploy.router.access")
request_log = logging.getLogger("deploy.router.requests")


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = MAX_BODY_BYTES
    read_timeout: float = READ_TIMEOUT_SECONDS
    upstream_timeout: float = UPSTREAM_TIMEOUT_SECONDS


@dataclass(frozen=True)
class Upstream:
    deployment: str
    version: str | None
    port: int


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"
    upstream: Upstream | None = None
    error: str | None = None  # for the request log
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    close: bool = False  # the request was not read to its end: close the connection after answering


class Failure(Exception):
    """An error the router answers itself."""

    def __init__(
        self, status: int, code: str, message: str, close: bool = False, upstream: Upstream | None = None,
        **headers: str,
    ):
        super().__init__(message)
        self.answer = Answer(
            status, error_body(code, message), error=f"{code}: {message}", close=close, upstream=upstream,
            headers=[(name.lower().encode(), value.encode()) for name, value in headers.items()],
        )


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error_code": code, "message": message}).encode()


class RoutingTable:
    """The traffic shares of the slot's state file, re-read only when the file changed.

    It is looked at before every request (so a switch holds from the next request on) and every
    STATE_POLL_SECONDS in between (so the table is current even if the file is damaged before the
    next request comes)."""

    def __init__(self, state_file: Path):
        self.state_file = state_file
        self._seen: tuple[int, int, int] | None = None
        self._shares: list[tuple[Upstream, int]] = []
        self._lock = threading.Lock()

    def choose(self) -> Upstream | None:
        self.refresh()
        shares = self._shares
        if not shares:
            return None
        upstreams, weights = zip(*shares, strict=True)
        return random.choices(upstreams, weights=weights)[0]  # noqa: S311 - a traffic split, not a secret

    def watch(self) -> None:
        def poll() -> None:
            while True:
                time.sleep(STATE_POLL_SECONDS)
                self.refresh()

        threading.Thread(target=poll, name="state-watch", daemon=True).start()

    def refresh(self) -> None:
        try:
            stat = os.stat(self.state_file)
        except OSError:
            return  # deleted: serve on with the last table read; the local target reports the loss
        identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if identity == self._seen:
            return
        with self._lock:
            if identity != self._seen:
                self._read(identity)

    def _read(self, identity: tuple[int, int, int]) -> None:
        self._seen = identity
        try:
            state = slot_state.checked(json.loads(self.state_file.read_text()), self.state_file.stem)
            deployments = state["deployments"]
            shares = [
                (Upstream(name, deployments[name].get("version"), int(deployments[name]["port"])), int(share))
                for name, share in state["traffic"].items() if int(share) > 0
            ]
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            access_log.warning("state file %s unreadable (%s); keeping the previous routes", self.state_file, exc)
            return
        self._shares = shares


class Router:
    """The ASGI app: routes, bounded reads, the forward, the logs."""

    def __init__(self, state_file: Path, limits: Limits):
        self.slot = state_file.stem
        self.routes = RoutingTable(state_file)
        self.routes.watch()
        self.limits = limits
        self.pool = ThreadPoolExecutor(UPSTREAM_THREADS, thread_name_prefix="upstream")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        arrived = datetime.now(UTC)
        started = time.perf_counter()
        body: bytes | None = None
        try:
            self._check_route(scope)
            body = await self._read_body(scope, receive) if scope["method"] == "POST" else None
            answer = await self._forward(scope, body)
        except Failure as failure:
            answer = failure.answer
        except Exception as exc:  # a defect here must still get a JSON answer
            access_log.exception("router error")
            answer = Failure(500, "INTERNAL_ERROR", f"the router failed: {type(exc).__name__}").answer
        headers = [(b"content-type", answer.content_type.encode()), (b"content-length", str(len(answer.body)).encode())]
        if answer.upstream:
            headers.append((DEPLOYMENT_HEADER.encode(), answer.upstream.deployment.encode()))
        if answer.close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers + answer.headers})
        await send({"type": "http.response.body", "body": answer.body})
        latency_ms = round((time.perf_counter() - started) * 1000, 2)
        access_log.info(
            '%s "%s %s HTTP/%s" %d %d %.1fms %s', _client(scope), scope["method"], scope["path"],
            scope["http_version"], answer.status, len(answer.body), latency_ms,
            answer.upstream.deployment if answer.upstream else "-",
        )
        if scope["path"] == SCORING_PATH and scope["method"] == "POST":
            record = (arrived, latency_ms, scope, body, answer)
            await asyncio.get_running_loop().run_in_executor(self.pool, self._log_request, *record)

    def _check_route(self, scope: Scope) -> None:
        methods = ROUTES.get(scope["path"])
        if methods is None:
            raise Failure(404, "ENDPOINT_NOT_FOUND", f"no endpoint {scope['path']}; served: {', '.join(ROUTES)}")
        if scope["method"] not in methods:
            raise Failure(
                405, "METHOD_NOT_ALLOWED", f"{scope['method']} {scope['path']} not served; use {' or '.join(methods)}",
                Allow=", ".join(methods),
            )

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")  # h11 accepts only digits here
        if declared is None and b"chunked" not in headers.get(b"transfer-encoding", b"").lower():
            raise Failure(411, "LENGTH_REQUIRED", "POST needs a Content-Length or a chunked body", close=True)
        if declared is not None and int(declared) > self.limits.max_body_bytes:
            raise Failure(413, "REQUEST_TOO_LARGE", _too_large(int(declared), self.limits), close=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.read_timeout
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(deadline - loop.time(), 0))
            except TimeoutError:
                raise Failure(
                    408, "REQUEST_TIMEOUT", f"the request body did not arrive within {self.limits.read_timeout:g} s",
                    close=True,
                ) from None
            if message["type"] == "http.disconnect":
                raise Failure(400, "BAD_REQUEST", "the client closed the connection before its body ended", close=True)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                raise Failure(413, "REQUEST_TOO_LARGE", _too_large(size, self.limits), close=True)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _forward(self, scope: Scope, body: bytes | None) -> Answer:
        upstream = self.routes.choose()
        if upstream is None:
            raise Failure(503, "SERVICE_UNAVAILABLE", f"no deployment of slot {self.slot} takes traffic")
        headers = {
            name.decode(): value.decode("latin-1")
            for name, value in scope["headers"] if name.decode() in FORWARDED_HEADERS
        }
        method = "GET" if scope["method"] == "HEAD" else scope["method"]  # MLflow answers GET only; h11 drops the body
        target = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope["query_string"] else "")
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            try:
                status, content_type, payload = await loop.run_in_executor(
                    self.pool, _call, upstream.port, method, target, headers, body, self.limits.upstream_timeout
                )
                break
            except ConnectionRefusedError:
                moved_to = self.routes.choose()
                if attempt == 2 or moved_to is None or moved_to.port == upstream.port:
                    raise Failure(
                        502, "BAD_GATEWAY",
                        f"deployment {upstream.deployment} (port {upstream.port}) refused the connection",
                        upstream=upstream,
                    ) from None
                upstream = moved_to  # traffic moved while this request was on its way: nothing was sent yet
            except TimeoutError:
                raise Failure(
                    504, "GATEWAY_TIMEOUT",
                    f"deployment {upstream.deployment} did not answer within {self.limits.upstream_timeout:g} s",
                    upstream=upstream,
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                raise Failure(
                    502, "BAD_GATEWAY", f"deployment {upstream.deployment} broke the connection: {type(exc).__name__}",
                    upstream=upstream,
                ) from None
        error = None if status < 400 else _upstream_error(status, payload)
        return Answer(status, payload, content_type or "application/json", upstream=upstream, error=error)

    def _log_request(
        self, arrived: datetime, latency_ms: float, scope: Scope, body: bytes | None, answer: Answer
    ) -> None:
        try:
            content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
            record = {
                "time": arrived.isoformat(timespec="milliseconds"),
                "slot": self.slot,
                "deployment": answer.upstream.deployment if answer.upstream else None,
                "version": answer.upstream.version if answer.upstream else None,
                "status": answer.status,
                "latency_ms": latency_ms,
                "inputs": rows_of(content_type, body),
                "outputs": predictions_of(answer.body) if answer.status < 400 else None,
                "error": answer.error[:ERROR_TEXT_CHARACTERS] if answer.error else None,
            }
            request_log.info(json.dumps(record, separators=(",", ":"), default=str))
        except Exception:  # the log must never fail a request
            access_log.exception("could not log a request")


def _call(
    port: int, method: str, target: str, headers: dict[str, str], body: bytes | None, timeout: float
) -> tuple[int, str | None, bytes]:
    """One request to a deployment on 127.0.0.1 (run on the router's thread pool)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


def _upstream_error(status: int, payload: bytes) -> str:
    try:
        document = json.loads(payload)
        return f"{document.get('error_code', status)}: {document.get('message', '')}".strip()
    except (ValueError, AttributeError):
        return f"{status}: {payload[:ERROR_TEXT_CHARACTERS].decode(errors='replace')}"


def _too_large(size: int, limits: Limits) -> str:
    return f"the request body ({size} bytes or more) is over the router's limit of {limits.max_body_bytes} bytes"


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


# --- the request log's normalisation ------------------------------------------------------------------


def rows_of(content_type: str, body: bytes | None) -> list[dict[str, Any]] | None:
    """The request's rows as records (column -> value), from the forms MLflow's scoring server accepts."""
    if not body:
        return None
    try:
        if content_type.split(";")[0].strip().lower() == "text/csv":
            rows = csv.DictReader(io.StringIO(body.decode()))
            return [{column: _number(value) for column, value in row.items()} for row in rows]
        document = json.loads(body)
        if not isinstance(document, dict):
            return None
        if "dataframe_split" in document:
            split = document["dataframe_split"]
            return [dict(zip(split["columns"], row, strict=True)) for row in split["data"]]
        for key in ("dataframe_records", "inputs", "instances"):
            if key in document:
                return _records(document[key])
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None
    return None


def _records(value: Any) -> list[dict[str, Any]] | None:
    if isinstance(value, list) and all(isinstance(row, dict) for row in value):
        return value
    if isinstance(value, dict) and all(isinstance(column, list) for column in value.values()):
        columns = list(value)
        return [dict(zip(columns, row, strict=True)) for row in zip(*value.values(), strict=True)]
    return None  # a tensor without column names


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def predictions_of(payload: bytes) -> list[Any] | None:
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    predictions = document.get("predictions") if isinstance(document, dict) else None
    return predictions if isinstance(predictions, list) else None


# --- uvicorn's protocol, with JSON 400s and a deadline for a request's head -----------------------------


class RouterProtocol(H11Protocol):
    """uvicorn's h11 protocol; see the module docstring for the two changes."""

    read_timeout = READ_TIMEOUT_SECONDS  # set by `serve`

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._expect_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._expect_head()  # part of a request's head: it has read_timeout to complete
        elif self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        super().connection_lost(exc)

    def _expect_head(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.read_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.our_state is h11.IDLE:
            message = f"the request's head did not arrive within {self.read_timeout:g} s"
            self._send_json_error(408, "REQUEST_TIMEOUT", message)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        problem = sys.exc_info()[1]  # uvicorn calls this while it handles h11's RemoteProtocolError
        if isinstance(problem, h11.RemoteProtocolError):
            self._send_json_error(problem.error_status_hint, "BAD_REQUEST", f"malformed HTTP/1.1 request: {problem}")
        else:
            self._send_json_error(400, "BAD_REQUEST", msg)
        self.transport.close()

    def _send_json_error(self, status: int, code: str, message: str) -> None:
        body = error_body(code, message)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        try:
            head = h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase.encode())
            for event in (head, h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:  # our side had already answered: nothing more to say
            pass
        access_log.info('%s "-" %d %d (%s)', ":".join(map(str, self.client or ())) or "-", status, len(body), message)


# --- start-up -----------------------------------------------------------------------------------------


def serve(
    state_file: Path, port: int, limits: Limits = Limits(), access_log_bytes: int = ACCESS_LOG_MAX_BYTES,
    request_log_bytes: int = REQUEST_LOG_MAX_BYTES,
) -> None:
    serving = state_file.parent
    slot = state_file.stem
    _rotated(access_log, serving / "logs" / f"{slot}-router-access.log", access_log_bytes, ACCESS_LOG_BACKUPS,
             "%(asctime)s %(message)s")
    _rotated(request_log, serving / "requests" / f"{slot}.jsonl", request_log_bytes, REQUEST_LOG_BACKUPS,
             "%(message)s")
    uvicorn_log = logging.getLogger("uvicorn.error")  # its start-up lines and warnings go to the access log
    uvicorn_log.handlers, uvicorn_log.propagate = list(access_log.handlers), False
    uvicorn_log.setLevel(logging.INFO)
    protocol = type("SlotProtocol", (RouterProtocol,), {"read_timeout": limits.read_timeout})
    config = uvicorn.Config(
        Router(state_file, limits), host="127.0.0.1", port=port, http=protocol, lifespan="off", log_config=None,
        access_log=False, server_header=False, timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=SHUTDOWN_SECONDS, h11_max_incomplete_event_size=MAX_HEAD_BYTES,
    )
    uvicorn.Server(config).run()


def _rotated(logger: logging.Logger, path: Path, max_bytes: int, backups: int, layout: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    handler.setFormatter(logging.Formatter(layout))
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", required=True, type=Path, help="the slot's state file, <serving>/<slot>.json")
    parser.add_argument("--port", required=True, type=int, help="the slot's stable port")
    parser.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES)
    parser.add_argument("--read-timeout", type=float, default=READ_TIMEOUT_SECONDS)
    parser.add_argument("--upstream-timeout", type=float, default=UPSTREAM_TIMEOUT_SECONDS)
    parser.add_argument("--access-log-max-bytes", type=int, default=ACCESS_LOG_MAX_BYTES)
    parser.add_argument("--request-log-max-bytes", type=int, default=REQUEST_LOG_MAX_BYTES)
    args = parser.parse_args()
    limits = Limits(args.max_body_bytes, args.read_timeout, args.upstream_timeout)
    serve(args.state.resolve(), args.port, limits, args.access_log_max_bytes, args.request_log_max_bytes)


if __name__ == "__main__":
    main()
