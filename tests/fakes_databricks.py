"""A small fake of the Databricks Jobs REST API (2.1 and 2.2) on 127.0.0.1, for the real databricks-sdk client.

It answers the documented request and response shapes of `POST jobs/run-now`, `GET jobs/runs/get`,
`GET jobs/runs/list` and `GET jobs/runs/get-output` (plus the SDK's host-metadata probe), and
checks every request for an Entra ID bearer token and the workspace's Azure resource id.
A run follows a script of states: each `runs/get` of it moves it one step on, as if time passed.
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

ACTIVE = ("QUEUED", "PENDING", "RUNNING", "TERMINATING", "BLOCKED", "WAITING_FOR_RETRY")


@dataclass(frozen=True)
class Step:
    life_cycle_state: str
    result_state: str | None = None
    state_message: str = ""


SUCCEEDS = (Step("PENDING", state_message="Waiting for cluster"), Step("RUNNING"), Step("TERMINATED", "SUCCESS"))


def fails(message: str, error: str) -> tuple[tuple[Step, ...], str]:
    """A script that ends FAILED with `message`, and the task's error (what get-output reports)."""
    return (Step("PENDING"), Step("RUNNING"), Step("TERMINATED", "FAILED", message)), error


@dataclass
class FakeRun:
    run_id: int
    task_run_id: int
    job_id: int
    notebook_params: dict[str, str]
    script: tuple[Step, ...]
    notebook_result: str | None = None
    error: str | None = None
    position: int = 0

    @property
    def step(self) -> Step:
        return self.script[min(self.position, len(self.script) - 1)]

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "life_cycle_state": self.step.life_cycle_state,
            "state_message": self.step.state_message,
            "user_cancelled_or_timedout": False,
        }
        if self.step.result_state:
            state["result_state"] = self.step.result_state
        return state


@dataclass
class FakeJobsApi:
    """The fake workspace. `next_script` (and `next_result` / `next_error`) say how the next started run goes."""

    job_id: int = 4242
    token: str = "entra-token-for-tests"
    # The caller is a service principal with a role on the workspace but not yet a workspace user: Databricks
    # lets it in only with a token for Azure's service management endpoint beside its Databricks token.
    management_token: str | None = "management-token-for-tests"
    workspace_resource_id: str = (
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-churn-dev"
        "/providers/Microsoft.Databricks/workspaces/dbw-churn-dev"
    )
    next_script: tuple[Step, ...] = SUCCEEDS
    next_result: str | None = None
    next_error: str | None = None
    runs: dict[int, FakeRun] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    _ids: Any = field(default_factory=lambda: itertools.count(1001))

    def add_run(
        self, build: str, script: tuple[Step, ...], notebook_result: str | None = None, error: str | None = None
    ) -> FakeRun:
        run = FakeRun(
            next(self._ids), next(self._ids), self.job_id, {"buildNumber": build, "buildSource": "ci@1"}, script,
            notebook_result, error,
        )
        self.runs[run.run_id] = run
        return run

    def calls(self, method: str, endpoint: str) -> list[dict[str, Any]]:
        """The requests made to `endpoint` (e.g. jobs/run-now), whichever API version the SDK used."""
        return [call for call in self.requests if call["method"] == method and call["endpoint"] == endpoint]

    def __enter__(self) -> FakeJobsApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api._handle(self, "GET")

            def do_POST(self) -> None:
                api._handle(self, "POST")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # --- the API -------------------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        parsed = urlparse(request.path)
        query = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
        length = int(request.headers.get("Content-Length") or 0)
        body = json.loads(request.rfile.read(length)) if length else {}
        if parsed.path == "/.well-known/databricks-config":
            return _reply(request, 200, {"oidc_endpoint": f"{self.url}/oidc", "workspace_id": "1234567890123456"})
        parts = parsed.path.split("/")  # '', 'api', '2.2', 'jobs', ...
        if parts[:2] != ["", "api"] or parts[2] not in ("2.1", "2.2"):
            return _reply(request, 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"no API at {parsed.path}"})
        endpoint = "/".join(parts[3:])
        self.requests.append(
            {"method": method, "endpoint": endpoint, "version": parts[2], "query": query, "body": body,
             "headers": dict(request.headers)}
        )
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _reply(request, 401, {"error_code": "UNAUTHENTICATED", "message": "Invalid access token."})
        if request.headers.get("X-Databricks-Azure-Workspace-Resource-Id") != self.workspace_resource_id:
            return _reply(request, 403, {"error_code": "PERMISSION_DENIED", "message": "Wrong workspace."})
        if self.management_token and request.headers.get("X-Databricks-Azure-SP-Management-Token") != (
            self.management_token
        ):
            return _reply(request, 403, {
                "error_code": "PERMISSION_DENIED",
                "message": "The service principal is not a user of this workspace and sent no management token.",
            })
        handler = {
            ("POST", "jobs/run-now"): self._run_now,
            ("GET", "jobs/runs/get"): self._get_run,
            ("GET", "jobs/runs/list"): self._list_runs,
            ("GET", "jobs/runs/get-output"): self._get_output,
        }.get((method, endpoint))
        if handler is None:
            return _reply(request, 404, {"error_code": "ENDPOINT_NOT_FOUND", "message": f"no {method} {endpoint}"})
        status, document = handler(query, body)
        _reply(request, status, document)

    def _run_now(self, query: dict[str, str], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("job_id") != self.job_id:
            return 400, _invalid(f"Job {body.get('job_id')} does not exist.")
        run = FakeRun(
            next(self._ids), next(self._ids), self.job_id, dict(body.get("notebook_params") or {}), self.next_script,
            self.next_result, self.next_error,
        )
        self.runs[run.run_id] = run
        return 200, {"run_id": run.run_id, "number_in_job": run.run_id}

    def _get_run(self, query: dict[str, str], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        run = self.runs.get(int(query.get("run_id", 0)))
        if run is None:
            return 400, _invalid(f"Run {query.get('run_id')} does not exist.")
        document = self._document(run)
        run.position += 1  # the next look finds the run further on
        return 200, document

    def _list_runs(self, query: dict[str, str], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        runs = sorted(
            (run for run in self.runs.values() if run.job_id == int(query.get("job_id", self.job_id))),
            key=lambda run: run.run_id, reverse=True,
        )
        if query.get("active_only") == "true":
            runs = [run for run in runs if run.step.life_cycle_state in ACTIVE]
        limit = min(int(query.get("limit", 20)), 25)
        offset = int(query.get("page_token") or 0)
        page = runs[offset : offset + limit]
        document: dict[str, Any] = {"runs": [self._document(run, tasks=False) for run in page]}
        if offset + limit < len(runs):
            document["has_more"] = True
            document["next_page_token"] = str(offset + limit)
        else:
            document["has_more"] = False
        return 200, document

    def _get_output(self, query: dict[str, str], body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        task_run_id = int(query.get("run_id", 0))
        run = next((run for run in self.runs.values() if run.task_run_id == task_run_id), None)
        if run is None:
            if task_run_id in self.runs:
                return 400, _invalid(
                    "Retrieving the output of runs with multiple tasks is not supported. "
                    "Please retrieve the output of each individual task run instead."
                )
            return 400, _invalid(f"Run {task_run_id} does not exist.")
        document: dict[str, Any] = {"metadata": self._task_document(run)}
        if run.error is not None:
            document["error"] = run.error
            document["error_trace"] = f"Traceback (most recent call last):\n  ...\n{run.error}"
        elif run.notebook_result is not None and run.step.life_cycle_state == "TERMINATED":
            document["notebook_output"] = {"result": run.notebook_result, "truncated": False}
        return 200, document

    def _document(self, run: FakeRun, tasks: bool = True) -> dict[str, Any]:
        document: dict[str, Any] = {
            "job_id": run.job_id,
            "run_id": run.run_id,
            "number_in_job": run.run_id,
            "run_name": "churn-train",
            "run_type": "JOB_RUN",
            "trigger": "ONE_TIME",
            "creator_user_name": "automation@example.org",
            "start_time": 1_795_000_000_000 + run.run_id,
            "state": run.state(),
            "run_page_url": f"https://adb-1234567890123456.7.azuredatabricks.net/?o=1234567890123456#job/"
            f"{run.job_id}/run/{run.run_id}",
            "overriding_parameters": {"notebook_params": run.notebook_params},
        }
        if tasks:
            document["tasks"] = [self._task_document(run)]
        return document

    def _task_document(self, run: FakeRun) -> dict[str, Any]:
        return {
            "run_id": run.task_run_id,
            "task_key": "train",
            "job_run_id": run.run_id,
            "state": run.state(),
            "notebook_task": {
                "notebook_path": "/Shared/churn-mlops/notebooks/train_churn",
                "source": "WORKSPACE",
                "base_parameters": {"env": "dev", "buildNumber": "", "buildSource": ""},
            },
            "run_page_url": f"https://adb-1234567890123456.7.azuredatabricks.net/?o=1234567890123456#job/"
            f"{run.job_id}/run/{run.task_run_id}",
        }


def _invalid(message: str) -> dict[str, str]:
    return {"error_code": "INVALID_PARAMETER_VALUE", "message": message}


def _reply(request: BaseHTTPRequestHandler, status: int, document: dict[str, Any]) -> None:
    payload = json.dumps(document).encode()
    request.send_response(status)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(payload)))
    request.end_headers()
    request.wfile.write(payload)
