"""Each Azure ML endpoint's diagnostic settings: its logs and metrics go to the environment's Log Analytics.

The stack's alert rules (p95 latency, 5xx rate, CPU, memory per slot) are log-search rules on the Log
Analytics workspace: the only scope that exists at apply time, since `release` creates the endpoints.
They read `AmlOnlineEndpointTrafficLog` (the endpoint's logs) and `AzureMetrics` (its deployments'
metrics), which only a diagnostic setting on each endpoint and deployment fills. `release` adds them
when the Azure ML target creates an endpoint or a deployment: all logs and metrics of the endpoint,
the metrics of each deployment (deployments have no log categories).

A diagnostic setting is an ARM extension resource, written with one idempotent PUT through
azure-mgmt-core's ARM pipeline (bearer token, retries). Not azure-mgmt-monitor: its 7.0.0 dropped the
`diagnostic_settings` operations that 7.0.0b1 had (Azure/azure-sdk-for-python#42425).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from config import EnvConfig

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

API_VERSION = "2021-05-01-preview"  # Microsoft.Insights/diagnosticSettings, with category groups
SETTING_NAME = "churn-log-analytics"
ONLINE_ENDPOINTS = "Microsoft.MachineLearningServices/workspaces/{workspace}/onlineEndpoints/{endpoint}"


class DiagnosticSettings:
    """Writes the diagnostic setting of an endpoint (logs and metrics) or of a deployment (metrics)."""

    def __init__(
        self, env: EnvConfig, log_analytics_workspace_id: str, credential: TokenCredential, *,
        subscription_id: str, resource_group: str, ml_workspace: str, transport: Any = None,
    ):
        from azure.core.pipeline.policies import RetryPolicy, UserAgentPolicy
        from azure.mgmt.core import ARMPipelineClient
        from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy

        from deploy.platform.azure_auth import scope

        self.workspace_id = log_analytics_workspace_id
        self._prefix = (f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}/providers/"
                        f"{ONLINE_ENDPOINTS.split('/{endpoint}')[0].format(workspace=ml_workspace)}")
        policies = [
            UserAgentPolicy("churn-mlops-release"),
            RetryPolicy(),
            ARMChallengeAuthenticationPolicy(credential, scope(env.cloud.resource_manager)),
        ]
        options = {"transport": transport} if transport is not None else {}
        self._base = env.cloud.resource_manager.rstrip("/")
        self._client = ARMPipelineClient(self._base, policies=policies, **options)

    def endpoint_id(self, endpoint: str) -> str:
        return f"{self._prefix}/{endpoint}"

    def deployment_id(self, endpoint: str, deployment: str) -> str:
        return f"{self._prefix}/{endpoint}/deployments/{deployment}"

    def for_endpoint(self, endpoint: str) -> dict[str, Any]:
        """All the endpoint's logs (traffic, console, events) and metrics."""
        return self._put(self.endpoint_id(endpoint), logs=True)

    def for_deployment(self, endpoint: str, deployment: str) -> dict[str, Any]:
        """The deployment's metrics (CPU, memory, disk, requests)."""
        return self._put(self.deployment_id(endpoint, deployment), logs=False)

    def _put(self, resource_id: str, logs: bool) -> dict[str, Any]:
        from azure.core.exceptions import HttpResponseError
        from azure.core.rest import HttpRequest

        body = {"properties": {
            "workspaceId": self.workspace_id,
            "logs": [{"categoryGroup": "allLogs", "enabled": True}] if logs else [],
            "metrics": [{"category": "AllMetrics", "enabled": True}],
        }}
        url = f"{self._base}{resource_id}/providers/Microsoft.Insights/diagnosticSettings/{SETTING_NAME}"
        request = HttpRequest("PUT", url, params={"api-version": API_VERSION}, json=body)
        response = self._client.send_request(request)
        if response.status_code not in (200, 201):
            raise HttpResponseError(
                message=f"diagnostic setting of {resource_id}: {response.status_code} {response.text()[:200]}"
            )
        return response.json()
