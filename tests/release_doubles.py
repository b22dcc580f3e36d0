"""Test doubles for the release: a serving target that only answers `describe`; the Azure ML registry stand-in.

`ServedBy` tells the gate which version prod serves (the serving target is the truth) in tests that
must stop before anything is deployed: every call that would change a slot fails the test.

`AzureMLRegistry` is a real MLflow tracking server (MLflow's own Flask app over a SQLite store, on
127.0.0.1) behind a filter that refuses what Azure ML's MLflow support tables do not list:
registered-model aliases, tags, renames and deletes (registered models are immutable there), MLflow 3
logged models, and run searches whose filter uses `attributes.*`, LIKE/ILIKE, OR or `!=` on a tag,
or whose order uses metrics. Refusals look like an unsupported endpoint's (404 ENDPOINT_NOT_FOUND)
or a rejected filter's (400 INVALID_PARAMETER_VALUE).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from deploy.release.targets.base import SUCCEEDED, DeploymentInfo, EndpointInfo, Target


class ServedBy(Target):
    """prod serves `version` (or nothing); stage serves nothing. Anything that would change a slot fails."""

    def __init__(self, version: str | None):
        self.version = version
        self.described: list[str] = []

    def describe(self, slot: str) -> EndpointInfo | None:
        self.described.append(slot)
        if slot != "prod" or self.version is None:
            return None
        name = f"churn-v{self.version}"
        return EndpointInfo(name="churnservice-prod", url="http://127.0.0.1:9/invocations", state=SUCCEEDED,
                            deployments=(DeploymentInfo(name, self.version, 100, SUCCEEDED),), previous=None)

    def _changes(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("the release went past the gate")

    ensure_endpoint = create_deployment = invoke_deployment = invoke_slot = switch_traffic = delete_deployment = (
        _changes
    )


# --- the Azure ML registry stand-in -------------------------------------------------------------------

UNSUPPORTED_ENDPOINTS = (
    "/registered-models/alias",  # aliases: not in Azure ML's model support table
    "/registered-models/set-tag", "/registered-models/delete-tag",  # registered models are immutable
    "/registered-models/rename", "/registered-models/delete",
    "/logged-models",  # MLflow 3 logged models: the Azure ML tracking server answers 404
)
UNSUPPORTED_FILTERS = (
    (re.compile(r"\battributes\.", re.I), "filters on run attributes (attributes.status and others)"),
    (re.compile(r"\bI?LIKE\b", re.I), "LIKE and ILIKE comparators"),
    (re.compile(r"\bOR\b", re.I), "OR"),
    (re.compile(r"\btags\.\S+\s*!=", re.I), "!= on tags"),
)


class AzureMLRegistry:
    """A real MLflow server on 127.0.0.1 that refuses what Azure ML's MLflow does not support (see above)."""

    def __init__(self, backend_store_uri: str, artifact_root: Path):
        """Serve the MLflow store at `backend_store_uri` (e.g. the local environment's SQLite file, so builds
        logged there are found through this server), with new artifacts under `artifact_root`."""
        from mlflow.server import handlers
        from mlflow.server.constants import ARTIFACT_ROOT_ENV_VAR, BACKEND_STORE_URI_ENV_VAR

        os.environ[BACKEND_STORE_URI_ENV_VAR] = backend_store_uri
        os.environ[ARTIFACT_ROOT_ENV_VAR] = str(artifact_root)
        # MLflow's server keeps its stores in module globals: forget the last test's, and build this one's now.
        # Building them sets this process's MLflow URIs to the store (the server expects its own process):
        # done here, before the test points MLflow at this server, never while it serves.
        handlers._tracking_store = handlers._model_registry_store = None
        handlers._get_tracking_store()
        handlers._get_model_registry_store()
        from mlflow.server import app
        from werkzeug.serving import make_server

        self.refused: list[str] = []
        self._server = make_server("127.0.0.1", 0, self._refusing(app.wsgi_app), threaded=True)
        self.uri = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _refusing(self, wsgi: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if any(path.endswith(endpoint) or f"{endpoint}/" in path for endpoint in UNSUPPORTED_ENDPOINTS):
                return self._refuse(start_response, 404, "ENDPOINT_NOT_FOUND", f"{path} is not supported")
            if path.endswith("/runs/search"):
                length = int(environ.get("CONTENT_LENGTH") or 0)
                body = environ["wsgi.input"].read(length)
                environ["wsgi.input"] = _Replay(body)
                request = json.loads(body or b"{}")
                problem = _unsupported_search(request.get("filter", ""), request.get("order_by", []))
                if problem:
                    return self._refuse(start_response, 400, "INVALID_PARAMETER_VALUE", problem)
            if path.endswith("/model-versions/search"):
                query = parse_qs(environ.get("QUERY_STRING", "")).get("filter", [""])[0]
                if query and not re.fullmatch(r"name\s*=\s*'[^']*'", query.strip()):
                    return self._refuse(start_response, 400, "INVALID_PARAMETER_VALUE",
                                        f"model version filter {query!r}: only name = '...' is supported")
            return wsgi(environ, start_response)

        return app

    def _refuse(self, start_response: Callable[..., Any], status: int, code: str, message: str) -> list[bytes]:
        self.refused.append(message)
        body = json.dumps({"error_code": code, "message": message}).encode()
        reason = {404: "NOT FOUND", 400: "BAD REQUEST"}[status]
        start_response(f"{status} {reason}", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def _unsupported_search(filter_string: str, order_by: list[str]) -> str | None:
    for pattern, what in UNSUPPORTED_FILTERS:
        if pattern.search(filter_string or ""):
            return f"run search filter {filter_string!r}: {what} not supported"
    for order in order_by or []:
        if order.strip().lower().startswith("metrics."):
            return f"run search order_by {order!r}: ordering by metrics not supported"
    return None


class _Replay:
    """A WSGI input stream that yields a body already read."""

    def __init__(self, body: bytes):
        self._body = body
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._body) if size is None or size < 0 else self._offset + size
        chunk = self._body[self._offset:end]
        self._offset += len(chunk)
        return chunk

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)
