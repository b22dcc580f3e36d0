"""The Azure ML target: managed online endpoints through `azure-ai-ml` (SDK v2), one endpoint per slot.

Deployments are MLflow no-code deployments of the registered version (`azureml:churn-model:<n>`):
Azure ML builds the scoring environment from the model's own requirements, so there is no
scoring script or environment here. Endpoints use Entra ID tokens (`aml_token`), not keys.
The endpoint's tag `previous-deployment` names the rollback target. azure.ai.ml costs 2.4 s to
import, so it is imported only when this target is built.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from config import EnvConfig
from deploy.core.contract import REGISTERED_MODEL
from deploy.core.errors import DeployError
from deploy.core.report import heartbeat, progress
from deploy.release.targets.base import SUCCEEDED, DeploymentInfo, EndpointInfo, Target

if TYPE_CHECKING:
    import pandas as pd
    from azure.ai.ml import MLClient

    from deploy.platform.outputs import StackOutputs
    from deploy.release.targets.diagnostics import DiagnosticSettings

PREVIOUS_TAG = "previous-deployment"
UNUSABLE_STATES = frozenset({"Failed", "Canceled"})
# Smoke requests: connect fast, and give the model (not a hung connection) up to this long to answer.
SCORING_CONNECT_TIMEOUT_SECONDS = 10
SCORING_READ_TIMEOUT_SECONDS = 60
VERSION_TAG = "model-version"
# `azureml:churn-model:3`, or the ARM id `.../models/churn-model/versions/3` the service returns.
MODEL_REFERENCE = re.compile(rf"(?:^|[:/]){re.escape(REGISTERED_MODEL)}(?::|/versions/)(\d+)$")


class AzureMLTarget(Target):
    def __init__(self, env: EnvConfig, client: MLClient, diagnostics: DiagnosticSettings | None = None):
        self.env = env
        self.client = client
        self.diagnostics = diagnostics  # sends each endpoint's logs and metrics to Log Analytics (the alerts)
        self._scoring: dict[str, tuple[str, str]] = {}  # endpoint -> (scoring URI, token), fetched once
        self._clients: dict[str, Any] = {}  # endpoint -> its scoring client, kept for the validation's requests

    @classmethod
    def from_outputs(cls, env: EnvConfig, outputs: StackOutputs) -> AzureMLTarget:
        from azure.ai.ml import MLClient

        from deploy.platform.azure_auth import credential

        client = MLClient(
            credential(env), outputs.subscription_id, outputs.resource_group, outputs.ml_workspace_name,
            cloud=env.cloud.name,
        )
        from deploy.release.targets.diagnostics import DiagnosticSettings

        # Each endpoint and deployment sends its logs and metrics to the stack's Log Analytics workspace,
        # where the slot's alert rules (stacks/alerts) read them.
        diagnostics = DiagnosticSettings(
            env, outputs.log_analytics_workspace_id, credential(env), subscription_id=outputs.subscription_id,
            resource_group=outputs.resource_group, ml_workspace=outputs.ml_workspace_name,
        )
        return cls(env, client, diagnostics)

    def describe(self, slot: str) -> EndpointInfo | None:
        from azure.core.exceptions import ResourceNotFoundError

        name = self.env.endpoint_name(slot)
        try:
            endpoint = self.client.online_endpoints.get(name)
        except ResourceNotFoundError:
            return None
        traffic = endpoint.traffic or {}
        deployments = tuple(
            DeploymentInfo(
                name=deployment.name, version=version_of(deployment), traffic=int(traffic.get(deployment.name, 0)),
                state=deployment.provisioning_state or "Unknown",
            )
            for deployment in sorted(self.client.online_deployments.list(name), key=lambda found: found.name)
        )
        return EndpointInfo(
            name=name, url=endpoint.scoring_uri, state=endpoint.provisioning_state or "Unknown",
            deployments=deployments, previous=(endpoint.tags or {}).get(PREVIOUS_TAG) or None,
        )

    def ensure_endpoint(self, slot: str) -> EndpointInfo:
        from azure.ai.ml.entities import ManagedOnlineEndpoint

        found = self.describe(slot)
        if found is not None:
            self._send_diagnostics(found.name)  # an idempotent PUT: a run interrupted after creating converges
            return found
        name = self.env.endpoint_name(slot)
        progress(f"  creating endpoint {name}")
        endpoint = ManagedOnlineEndpoint(name=name, auth_mode="aml_token", tags={**self.env.tags, "slot": slot})
        with heartbeat(f"creating endpoint {name}"):
            self.client.online_endpoints.begin_create_or_update(endpoint).result()
        created = self.describe(slot)
        if created is None:
            raise DeployError(f"endpoint {name} was created but cannot be read back")
        self._send_diagnostics(name)
        return created

    def _send_diagnostics(self, endpoint: str, deployment: str | None = None) -> None:
        """The endpoint's logs and metrics (or a deployment's metrics) to Log Analytics, where the alerts read."""
        if self.diagnostics is None:
            return
        if deployment is None:
            self.diagnostics.for_endpoint(endpoint)
        else:
            self.diagnostics.for_deployment(endpoint, deployment)
        what = f"deployment {deployment}" if deployment else f"endpoint {endpoint}"
        progress(f"  {what} sends its logs and metrics to Log Analytics")

    def create_deployment(self, slot: str, name: str, version: str) -> DeploymentInfo:
        from azure.ai.ml.entities import ManagedOnlineDeployment

        endpoint = self.env.endpoint_name(slot)
        existing = self._deployment(endpoint, name)
        if existing is not None and version_of(existing) == version and existing.provisioning_state == SUCCEEDED:
            progress(f"  deployment {name} of {endpoint} already serves version {version}; reusing it")
            return DeploymentInfo(name, version, self._traffic(endpoint).get(name, 0), SUCCEEDED)
        if existing is not None and existing.provisioning_state in UNUSABLE_STATES:
            # Azure ML does not repair a failed deployment by updating it in place: delete it, create it anew.
            progress(f"  deployment {name} of {endpoint} is {existing.provisioning_state} (a failed earlier attempt); "
                     "deleting it to create it again")
            self.delete_deployment(slot, name)
        deployment = ManagedOnlineDeployment(
            name=name, endpoint_name=endpoint, model=f"azureml:{REGISTERED_MODEL}:{version}",
            instance_type=self.env.serving.instance_type, instance_count=self.env.serving.instance_count,
            tags={VERSION_TAG: version}, data_collector=production_data_collector(),
        )
        progress(f"  creating deployment {name} of {endpoint} (version {version}, "
                 f"{self.env.serving.instance_count} x {self.env.serving.instance_type}), zero traffic")
        with heartbeat(f"provisioning deployment {name}"):
            created = self.client.online_deployments.begin_create_or_update(deployment).result()
        state = getattr(created, "provisioning_state", None) or SUCCEEDED
        if state != SUCCEEDED:
            raise DeployError(f"deployment {name} of {endpoint} ended in state {state}")
        self._send_diagnostics(endpoint, name)
        return DeploymentInfo(name, version, 0, state)

    def invoke_deployment(self, slot: str, name: str, rows: pd.DataFrame) -> list[Any]:
        """Score `rows` on one deployment through the endpoint's scoring URI, as a client would.

        Not `online_endpoints.invoke`: that makes management calls on every request, which would
        dominate the latency the smoke validation measures. The URI and token are fetched once per
        endpoint; the request goes through azure-core with no retry policy, so an error is seen as one.
        """
        return self._score(slot, rows, deployment=name)

    def invoke_slot(self, slot: str, rows: pd.DataFrame) -> list[Any]:
        """Score `rows` through the endpoint's scoring URI with no deployment header: traffic decides."""
        return self._score(slot, rows, deployment=None)

    def _score(self, slot: str, rows: pd.DataFrame, deployment: str | None) -> list[Any]:
        from azure.core.rest import HttpRequest

        endpoint = self.env.endpoint_name(slot)
        uri, token = self._scoring_access(endpoint)
        headers = {"Authorization": f"Bearer {token}"}
        if deployment:
            headers["azureml-model-deployment"] = deployment
        # MLflow no-code deployments take pandas' split orientation under `input_data`.
        payload = {"input_data": json.loads(rows.to_json(orient="split"))}
        request = HttpRequest("POST", uri, json=payload, headers=headers)
        response = self._scoring_client(endpoint, uri).send_request(request)
        if response.status_code >= 400:
            who = f"deployment {deployment}" if deployment else f"endpoint {endpoint}"
            raise DeployError(f"{who} answered {response.status_code}: {response.text()[:200]}")
        return predictions_of(response.text())

    def _scoring_access(self, endpoint: str) -> tuple[str, str]:
        if endpoint not in self._scoring:
            keys = self.client.online_endpoints.get_keys(endpoint)  # aml_token endpoints: an access token
            token = getattr(keys, "access_token", None) or getattr(keys, "primary_key", None)
            if not token:
                raise DeployError(f"endpoint {endpoint} gave no token or key to score with")
            self._scoring[endpoint] = (self.client.online_endpoints.get(endpoint).scoring_uri, token)
        return self._scoring[endpoint]

    def _scoring_client(self, endpoint: str, uri: str) -> Any:
        """One client per endpoint for the whole validation, so the connection (and its TLS handshake) is
        made once and p95 measures the model. A bare azure-core pipeline: no retries (a retried failure
        would hide an error from the smoke validation), no HTTP logging (the request carries the token),
        and explicit timeouts."""
        if endpoint not in self._clients:
            from azure.core import PipelineClient
            from azure.core.pipeline.transport import RequestsTransport

            transport = RequestsTransport(
                connection_timeout=SCORING_CONNECT_TIMEOUT_SECONDS, read_timeout=SCORING_READ_TIMEOUT_SECONDS
            )
            self._clients[endpoint] = PipelineClient(uri, policies=[], transport=transport)
        return self._clients[endpoint]

    def switch_traffic(self, slot: str, to: str, previous: str | None) -> None:
        name = self.env.endpoint_name(slot)
        endpoint = self.client.online_endpoints.get(name)
        deployments = [deployment.name for deployment in self.client.online_deployments.list(name)]
        if to not in deployments:
            raise DeployError(f"endpoint {name} has no deployment {to} to switch traffic to")
        endpoint.traffic = {deployment: 100 if deployment == to else 0 for deployment in deployments}
        endpoint.tags = {**(endpoint.tags or {}), PREVIOUS_TAG: previous or ""}
        with heartbeat(f"moving the traffic of {name} to {to}"):
            self.client.online_endpoints.begin_create_or_update(endpoint).result()

    def delete_deployment(self, slot: str, name: str) -> None:
        endpoint = self.env.endpoint_name(slot)
        if self._deployment(endpoint, name) is None:
            return
        if self._traffic(endpoint).get(name, 0) > 0:
            raise DeployError(f"deployment {name} of {endpoint} takes traffic; switch it away before deleting it")
        with heartbeat(f"deleting deployment {name} of {endpoint}"):
            self.client.online_deployments.begin_delete(name=name, endpoint_name=endpoint).result()

    def _deployment(self, endpoint: str, name: str) -> Any:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.client.online_deployments.get(name=name, endpoint_name=endpoint)
        except ResourceNotFoundError:
            return None

    def _traffic(self, endpoint: str) -> dict[str, int]:
        return dict(self.client.online_endpoints.get(endpoint).traffic or {})


def version_of(deployment: Any) -> str | None:
    """The model version a deployment serves: its tag, else parsed from its model reference."""
    tagged = (deployment.tags or {}).get(VERSION_TAG)
    if tagged:
        return str(tagged)
    reference = deployment.model if isinstance(deployment.model, str) else getattr(deployment.model, "id", None)
    match = MODEL_REFERENCE.search(reference or "")
    return match.group(1) if match else None




def production_data_collector() -> Any:
    """Azure ML's production-data collection of the model's inputs and outputs, into the workspace's blob store
    (hourly folders). For MLflow no-code deployments Azure ML instruments the scoring itself; the collection
    names `model_inputs` and `model_outputs` are the ones its model monitoring reads."""
    import logging

    from azure.ai.ml.entities import DataCollector, DeploymentCollection

    notices = logging.getLogger("azure.ai.ml._utils._experimental")  # both classes log "experimental" once
    level = notices.level
    notices.setLevel(logging.ERROR)
    try:
        return DataCollector(
            collections={name: DeploymentCollection(enabled="true") for name in ("model_inputs", "model_outputs")},
            rolling_rate="hour",
        )
    finally:
        notices.setLevel(level)


def predictions_of(answer: str) -> list[Any]:
    """An MLflow deployment answers a JSON list, or `{"predictions": [...]}` (newer MLflow servers)."""
    document = json.loads(answer)
    if isinstance(document, str):  # some scoring servers encode their JSON answer once more
        document = json.loads(document)
    if isinstance(document, dict):
        document = document.get("predictions")
    if not isinstance(document, list):
        raise DeployError(f"the deployment answered {answer[:200]!r}; expected a JSON list of predictions")
    return document
