"""Start the workspace's `train` job for a build (or another notebook job) through databricks-sdk, and wait.

This replaces the hackathon guide's marketplace tasks (configure the Databricks CLI, start a
cluster, execute the notebook, wait). Auth is Entra ID only: an azure-identity credential (the
pipeline's Azure CLI login, or the automation identity) gets a token for the AzureDatabricks
application; there is no personal access token anywhere. `workspace_client` is the one place a
client is built, so tests can point the real SDK at a local fake of the Jobs API.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from config import AZURE_DATABRICKS_APP_ID, CLOUDS, EnvConfig
from deploy.core.errors import DeployError, Refused
from deploy.core.report import heartbeat, progress

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, TokenCredential
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.service.jobs import BaseRun, Run

    from deploy.platform.outputs import StackOutputs

ACTIVE_STATES = frozenset({"QUEUED", "PENDING", "RUNNING", "TERMINATING", "BLOCKED", "WAITING_FOR_RETRY"})
# How far back the duplicate-build check looks: build numbers are unique per pipeline run, so a
# duplicate is recent; the list is newest first.
RECENT_RUNS = 200
TOKEN_REFRESH_MARGIN_SECONDS = 300
# Beyond the job's own timeout: a queued run waits for the one before it.
WAIT_MARGIN_MINUTES = 15
POLL_SECONDS = 10.0


@dataclass(frozen=True)
class JobRun:
    run_id: int
    state: str  # the life-cycle state, and for a terminated run its result: TERMINATED/SUCCESS
    run_page_url: str
    reused: bool  # an existing run of this build was reported instead of starting one
    notebook_result: dict[str, Any] | None = None  # the notebook's exit value (the MLflow run), when finished

    def as_dict(self) -> dict[str, Any]:
        document = asdict(self)
        document.pop("notebook_result")
        return document


class EntraIdCredentials:
    """A databricks-sdk credentials strategy backed by an azure-identity credential.

    Every request carries an Entra ID token for the AzureDatabricks application, the workspace's
    Azure resource id, and a token for Azure's service management endpoint
    (X-Databricks-Azure-SP-Management-Token). The last is how a service principal with a role on the
    workspace, but not yet a user in it, gets in (the pipeline's identity before its first apply;
    databricks-sdk's own Azure service-principal auth sends it too). Tokens are reused until shortly
    before they expire (the Azure CLI credential would otherwise start `az` for every poll).
    """

    def __init__(
        self, credential: TokenCredential, workspace_resource_id: str,
        service_management: str = CLOUDS["AzureCloud"].service_management,
    ):
        self._credential = credential
        self._workspace_resource_id = workspace_resource_id
        self._scopes = {
            "databricks": f"{AZURE_DATABRICKS_APP_ID}/.default",
            "management": f"{service_management.rstrip('/')}/.default",
        }
        self._tokens: dict[str, AccessToken] = {}
        self._lock = threading.Lock()

    def auth_type(self) -> str:
        return "azure-identity"

    def __call__(self, cfg: Any) -> Callable[[], dict[str, str]]:
        def headers() -> dict[str, str]:
            return {
                "Authorization": f"Bearer {self._access_token('databricks')}",
                "X-Databricks-Azure-Workspace-Resource-Id": self._workspace_resource_id,
                "X-Databricks-Azure-SP-Management-Token": self._access_token("management"),
            }

        return headers

    def _access_token(self, audience: str) -> str:
        with self._lock:
            token = self._tokens.get(audience)
            if token is None or token.expires_on - TOKEN_REFRESH_MARGIN_SECONDS < time.time():
                token = self._tokens[audience] = self._credential.get_token(self._scopes[audience])
            return token.token


def workspace_client(
    env: EnvConfig, outputs: StackOutputs, credential: TokenCredential | None = None
) -> WorkspaceClient:
    """A client for `env`'s workspace with Entra ID auth (default: the environment's azure-identity chain)."""
    from databricks.sdk import WorkspaceClient

    if credential is None:
        from deploy.platform.azure_auth import credential as env_credential

        credential = env_credential(env)
    return WorkspaceClient(
        host=outputs.databricks_host,
        azure_workspace_resource_id=outputs.databricks_workspace_id,
        credentials_strategy=EntraIdCredentials(
            credential, outputs.databricks_workspace_id, env.cloud.service_management
        ),
    )


def wait_budget_minutes(env: EnvConfig) -> float:
    return env.training.job_timeout_minutes + WAIT_MARGIN_MINUTES


def run_training(
    client: WorkspaceClient,
    job_id: str | int,
    build: str,
    source: str,
    *,
    force: bool = False,
    wait: bool = True,
    timeout_minutes: float = 75,
    poll_seconds: float = POLL_SECONDS,
) -> JobRun:
    """Start the `train` job for `build` (or report the build's running or successful run) and wait for it.

    Raises Refused with the run's state message and URL when the run fails, DeployError when
    waiting outlasts `timeout_minutes` (the run itself is left alone).
    """
    from databricks.sdk.service.jobs import QueueSettings

    job_id = int(job_id)
    if not force:
        existing = find_build_run(client, job_id, build)
        if existing is not None:
            state = _state(existing)
            progress(f"build {build} already has job run {existing.run_id} ({state}): {existing.run_page_url}")
            progress("  reporting it instead of starting another (--force starts a new run)")
            if state in ACTIVE_STATES and not wait:
                return JobRun(existing.run_id, state, existing.run_page_url or "", reused=True)
            finished = _wait(client, existing.run_id, timeout_minutes, poll_seconds, state)
            return _finished(client, finished, reused=True)

    parameters = {"buildNumber": build, "buildSource": source}
    if force:
        parameters["force"] = "true"  # the notebook retrains even if the build has a finished MLflow run
    # Queued rather than skipped when another build is training (the job allows one run at a time).
    started = client.jobs.run_now(job_id=job_id, notebook_params=parameters, queue=QueueSettings(enabled=True))
    run = client.jobs.get_run(started.run_id)
    state = _state(run)
    progress(f"started job run {run.run_id} of job {job_id} for build {build} ({state}): {run.run_page_url}")
    if not wait:
        return JobRun(run.run_id, state, run.run_page_url or "", reused=False)
    finished = _wait(client, run.run_id, timeout_minutes, poll_seconds, state)
    return _finished(client, finished, reused=False)


def run_job(
    client: WorkspaceClient,
    job_id: str | int,
    parameters: dict[str, str],
    *,
    what: str,
    timeout_minutes: float = 75,
    poll_seconds: float = POLL_SECONDS,
) -> JobRun:
    """Start a run of a notebook job with `parameters` (queued behind a running one) and wait for it.

    Raises Refused when the run fails, DeployError when waiting outlasts `timeout_minutes`."""
    from databricks.sdk.service.jobs import QueueSettings

    job_id = int(job_id)
    started = client.jobs.run_now(job_id=job_id, notebook_params=parameters, queue=QueueSettings(enabled=True))
    run = client.jobs.get_run(started.run_id)
    state = _state(run)
    progress(f"started job run {run.run_id} of job {job_id} for {what} ({state}): {run.run_page_url}")
    finished = _wait(client, run.run_id, timeout_minutes, poll_seconds, state)
    return _finished(client, finished, reused=False)


def find_build_run(client: WorkspaceClient, job_id: int, build: str) -> BaseRun | None:
    """The newest run of the job for `build` that is still active or succeeded; failed ones don't count."""
    recent = itertools.islice(client.jobs.list_runs(job_id=job_id), RECENT_RUNS)
    for run in recent:
        parameters = run.overriding_parameters.notebook_params if run.overriding_parameters else None
        if (parameters or {}).get("buildNumber") != build:
            continue
        state = _state(run)
        if state in ACTIVE_STATES or state == "TERMINATED/SUCCESS":
            return run
    return None


def _wait(client: WorkspaceClient, run_id: int, timeout_minutes: float, poll_seconds: float, state: str) -> Run:
    """Poll the run until it ends; a line at each state change and a heartbeat meanwhile."""
    deadline = time.monotonic() + timeout_minutes * 60
    with heartbeat(f"waiting for job run {run_id}"):
        while True:
            run = client.jobs.get_run(run_id)
            now = _state(run)
            if now != state:
                progress(f"  job run {run_id}: {now}")
                state = now
            if run.state and run.state.life_cycle_state and run.state.life_cycle_state.value not in ACTIVE_STATES:
                return run
            if time.monotonic() > deadline:
                raise DeployError(
                    f"job run {run_id} is still {state} after {timeout_minutes:.0f} minutes; "
                    f"stopped waiting, the run goes on: {run.run_page_url}"
                )
            time.sleep(poll_seconds)


def _finished(client: WorkspaceClient, run: Run, reused: bool) -> JobRun:
    state = _state(run)
    url = run.run_page_url or ""
    if state != "TERMINATED/SUCCESS":
        message = (run.state.state_message if run.state else "") or "no message"
        error = _task_error(client, run)
        raise Refused(f"job run {run.run_id} ended {state}: {message}{f' ({error})' if error else ''}; see {url}")
    result = _notebook_result(client, run)
    if result:
        progress(f"job run {run.run_id} succeeded: MLflow run {result.get('run_id')}")
    return JobRun(run.run_id, state, url, reused=reused, notebook_result=result)


def _task_output(client: WorkspaceClient, run: Run) -> Any:
    """The output of the run's (single) notebook task: runs/get-output wants the task run's id."""
    task_run_id = run.tasks[0].run_id if run.tasks else run.run_id
    return client.jobs.get_run_output(task_run_id)


def _task_error(client: WorkspaceClient, run: Run) -> str:
    try:
        error = _task_output(client, run).error or ""
    except Exception:  # the failure itself is what matters; its detail is a bonus
        return ""
    return error.strip().splitlines()[-1] if error.strip() else ""


def _notebook_result(client: WorkspaceClient, run: Run) -> dict[str, Any] | None:
    output = _task_output(client, run)
    text = output.notebook_output.result if output.notebook_output else None
    if not text:
        return None
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        progress(f"job run {run.run_id}: the notebook's exit value is not JSON; no run details")
        return None
    return document if isinstance(document, dict) else None


def _state(run: BaseRun) -> str:
    if run.state is None or run.state.life_cycle_state is None:
        return "UNKNOWN"
    life_cycle = run.state.life_cycle_state.value
    result = run.state.result_state.value if run.state.result_state else None
    return f"{life_cycle}/{result}" if life_cycle == "TERMINATED" and result else life_cycle
