"""Monitoring's Azure side: the endpoints' metrics, the diagnostic settings and data collection `release` adds,
the churn-monitor job the CLI starts, and the retraining the notebook starts.

- metrics: azure-mgmt-monitor's `MetricsOperations` as `create_autospec` (so every call matches the real
  signature), answering `Response` objects deserialized from the documented REST JSON;
- diagnostic settings: the real azure-mgmt-core ARM pipeline against a local HTTPS fake of
  `Microsoft.Insights/diagnosticSettings` that refuses what ARM refuses (no token, another api-version,
  no destination, log categories on a deployment, which has none);
- data collection: the real `ManagedOnlineDeployment` the target sends to an autospec of the real
  operations class (tests/rollout_fixtures.FakeWorkspace), down to its REST form;
- the jobs: the real databricks-sdk client against tests/fakes_databricks.FakeJobsApi.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import create_autospec

import pytest
from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.identity import DefaultAzureCredential

from config import load_environment
from deploy.cli import main
from deploy.monitoring import health, retrain
from deploy.monitoring.window import parse_window
from deploy.platform import outputs as outputs_module
from deploy.platform.outputs import OUTPUT_NAMES, StackOutputs
from deploy.release.targets.azureml import AzureMLTarget
from deploy.release.targets.diagnostics import API_VERSION, SETTING_NAME, DiagnosticSettings
from tests.fakes_databricks import FakeJobsApi
from tests.rollout_fixtures import FakeWorkspace

NOW = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
LOG_ANALYTICS = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-chrndev-churn/providers/"
                 "Microsoft.OperationalInsights/workspaces/log-chrndev-churn")


def credential_for(token: str = "arm-token", management: str = FakeJobsApi.management_token) -> Any:  # noqa: S107
    credential = create_autospec(DefaultAzureCredential, instance=True)

    def get_token(*scopes: str, **_: Any) -> AccessToken:
        issued = management if scopes[0].startswith("https://management.core.windows.net") else token
        return AccessToken(issued, int(time.time()) + 3600)

    credential.get_token.side_effect = get_token
    # azure-core's bearer policies ask get_token_info where a credential has it (azure-identity's do)
    credential.get_token_info.side_effect = lambda *scopes, **_: AccessTokenInfo(
        get_token(*scopes).token, int(time.time()) + 3600)
    return credential


def outputs_for(**values: str) -> StackOutputs:
    base = {name: f"test-{name}" for name in OUTPUT_NAMES}
    base.update(subscription_id="00000000-0000-0000-0000-000000000000", resource_group="rg-chrndev-churn",
                ml_workspace_name="mlw-chrndev-churn", tenant_id="11111111-1111-1111-1111-111111111111")
    return StackOutputs(**{**base, **values})


# --- the endpoint's metrics ----------------------------------------------------------------------


def metrics_response(name: str, series: list[tuple[str | None, list[float]]], start: datetime) -> Any:
    """A metrics/list answer as Azure Monitor sends it (REST JSON), deserialized by the SDK's own models."""
    from azure.mgmt.monitor.models import Response

    document = {
        "timespan": f"{start.isoformat()}/{(start + timedelta(hours=len(series[0][1]))).isoformat()}",
        "interval": "PT1H",
        "value": [{
            "id": f"/subscriptions/0/.../providers/Microsoft.Insights/metrics/{name}",
            "type": "Microsoft.Insights/metrics",
            "name": {"value": name, "localizedValue": name}, "unit": "Count",
            "timeseries": [{
                "metadatavalues": [] if code is None else [
                    {"name": {"value": "envoy_response_code", "localizedValue": "envoy_response_code"}, "value": code}],
                "data": [{"timeStamp": (start + timedelta(hours=hour)).isoformat(), "average": value}
                         for hour, value in enumerate(values)],
            } for code, values in series],
        }],
    }
    return Response.deserialize(document)


def test_endpoint_health_reads_requests_by_status_and_p95_from_azure_monitor(local_config):
    from azure.mgmt.monitor.operations import MetricsOperations

    env = load_environment("dev", local_config)
    window = parse_window("2h", NOW)
    operations = create_autospec(MetricsOperations, instance=True)
    answers = {
        "RequestsPerMinute": metrics_response("RequestsPerMinute", [("200", [10.0, 20.0]), ("503", [1.0, 0.5])],
                                              window.start),
        "RequestLatency_P95": metrics_response("RequestLatency_P95", [(None, [200.0, 800.0])], window.start),
    }
    operations.list.side_effect = lambda resource_uri, **query: answers[query["metricnames"]]
    resource = health.deployment_resource_id(outputs_for(), "churnservice-prod-chrndev", "churn-v3")

    found = health.endpoint_health(env, SimpleNamespace(metrics=operations), resource, window)

    counted, latency = operations.list.call_args_list
    assert counted.args[0] == resource
    assert resource.endswith("/onlineEndpoints/churnservice-prod-chrndev/deployments/churn-v3")
    assert counted.kwargs["filter"] == "envoy_response_code eq '*'" and counted.kwargs["interval"] == "PT1H"
    assert counted.kwargs["timespan"] == f"{window.start.isoformat()}/{window.end.isoformat()}"
    assert "filter" not in latency.kwargs
    assert (found["requests"], found["failed"], found["server_errors"]) == (1890, 90, 90)  # per-minute averages x 60
    assert found["error_rate"] == pytest.approx(90 / 1890)
    assert found["p95_latency_ms"] == pytest.approx((200 * 660 + 800 * 1230) / 1890)  # weighted by each hour's requests
    assert found["status"] == "ok"
    slow = replace(env, monitoring=replace(env.monitoring, max_p95_latency_ms=500))
    assert health.endpoint_health(slow, SimpleNamespace(metrics=operations), resource, window)["crossed"] == [
        "p95_latency_ms"]


# --- the diagnostic settings and data collection release adds --------------------------------------


class FakeDiagnosticSettings:
    """PUT {resource}/providers/Microsoft.Insights/diagnosticSettings/{name} over HTTPS, as ARM answers it."""

    TOKEN = "arm-token"

    def __init__(self, cert: Path, key: Path):
        self.settings: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                status, answer = fake.put(self.path, self.headers, body)
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def put(self, path: str, headers: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        resource, _, rest = path.partition("/providers/Microsoft.Insights/diagnosticSettings/")
        name, _, query = rest.partition("?")
        self.requests.append((resource, name))
        if headers.get("Authorization") != f"Bearer {self.TOKEN}":
            return 401, {"error": {"code": "AuthenticationFailed", "message": "no valid bearer token"}}
        if query != f"api-version={API_VERSION}":
            return 400, {"error": {"code": "InvalidApiVersionParameter", "message": f"unsupported: {query}"}}
        properties = body.get("properties", {})
        if not properties.get("workspaceId"):
            return 400, {"error": {"code": "BadRequest", "message": "no destination (workspaceId, storage, hub)"}}
        if "/deployments/" in resource and properties.get("logs"):
            return 400, {"error": {"code": "BadRequest", "message": "Category 'allLogs' is not supported."}}
        self.settings[resource] = properties
        return 200, {"id": f"{resource}/providers/microsoft.insights/diagnosticSettings/{name}", "name": name,
                     "type": "Microsoft.Insights/diagnosticSettings", "properties": properties}


@pytest.fixture
def arm(certificate):
    fake = FakeDiagnosticSettings(*certificate)
    yield fake
    fake.close()


def test_release_on_azure_ml_wires_endpoint_and_deployment_to_log_analytics_and_collects_model_data(
    local_config, arm, certificate
):
    from azure.core.pipeline.transport import RequestsTransport

    env = load_environment("dev", local_config)
    env = replace(env, cloud=replace(env.cloud, resource_manager=arm.url))
    outputs = outputs_for(log_analytics_workspace_id=LOG_ANALYTICS)
    diagnostics = DiagnosticSettings(
        env, LOG_ANALYTICS, credential_for(), subscription_id=outputs.subscription_id,
        resource_group=outputs.resource_group, ml_workspace=outputs.ml_workspace_name,
        transport=RequestsTransport(connection_verify=str(certificate[0])),
    )
    with FakeWorkspace(lambda version, rows: [0] * len(rows)) as workspace:
        target = AzureMLTarget(env, workspace, diagnostics)
        endpoint = target.ensure_endpoint("stage")
        target.create_deployment("stage", "churn-v1", "1")
        target.ensure_endpoint("stage")  # a re-run: the same setting again, no duplicate
        sent = workspace.online_deployments.begin_create_or_update.call_args.args[0]

    endpoint_id = diagnostics.endpoint_id(endpoint.name)
    deployment_id = diagnostics.deployment_id(endpoint.name, "churn-v1")
    assert endpoint_id == ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-chrndev-churn/"
                           "providers/Microsoft.MachineLearningServices/workspaces/mlw-chrndev-churn/onlineEndpoints/"
                           f"{endpoint.name}")
    assert arm.requests == [(endpoint_id, SETTING_NAME), (deployment_id, SETTING_NAME), (endpoint_id, SETTING_NAME)]
    assert arm.settings[endpoint_id] == {
        "workspaceId": LOG_ANALYTICS, "logs": [{"categoryGroup": "allLogs", "enabled": True}],
        "metrics": [{"category": "AllMetrics", "enabled": True}],
    }
    assert arm.settings[deployment_id]["logs"] == [] and arm.settings[deployment_id]["metrics"][0]["enabled"]

    # Production-data collection of the model's inputs and outputs, in the REST form the SDK sends.
    rest = sent.data_collector._to_rest_object()
    assert rest.rolling_rate == "hour"
    assert {name: collection.data_collection_mode for name, collection in rest.collections.items()} == {
        "model_inputs": "enabled", "model_outputs": "enabled"}
    assert sent.code_configuration is None and sent.environment is None  # still an MLflow no-code deployment


def test_a_refused_diagnostic_setting_stops_with_the_services_reason(local_config, arm, certificate):
    from azure.core.exceptions import HttpResponseError
    from azure.core.pipeline.transport import RequestsTransport

    env = load_environment("dev", local_config)
    env = replace(env, cloud=replace(env.cloud, resource_manager=arm.url))
    diagnostics = DiagnosticSettings(
        env, "", credential_for(), subscription_id="s", resource_group="rg", ml_workspace="w",
        transport=RequestsTransport(connection_verify=str(certificate[0])),
    )
    with pytest.raises(HttpResponseError, match=r"400 .*no destination"):
        diagnostics.for_endpoint("churnservice-stage-chrndev")


# --- the jobs: churn-monitor started by the CLI, churn-train by the notebook --------------------------


@pytest.fixture
def jobs_api():
    with FakeJobsApi() as api:
        yield api


def test_a_crossing_starts_the_days_churn_train_run_once(local_config, jobs_api):
    from deploy.platform import jobs

    env = load_environment("dev", local_config)
    outputs = outputs_for(databricks_host=jobs_api.url, databricks_workspace_id=jobs_api.workspace_resource_id,
                          train_job_id=str(jobs_api.job_id))
    client = jobs.workspace_client(env, outputs, credential_for(jobs_api.token))

    first = retrain.start_on_databricks(env, outputs, NOW, client=client)
    again = retrain.start_on_databricks(env, outputs, NOW + timedelta(hours=3), client=client)

    (started,) = jobs_api.calls("POST", "jobs/run-now")  # the second crossing that day found the first run
    expected = {"buildNumber": "monitor-20261201", "buildSource": "monitor@2026-12-01"}
    assert started["body"]["notebook_params"] == expected
    assert first["started"] and first["job_run"]["reused"] is False and "promotes nothing" in first["message"]
    assert again["job_run"]["reused"] is True and again["job_run"]["run_id"] == first["job_run"]["run_id"]
    assert jobs_api.calls("GET", "jobs/runs/get-output") == []  # it does not wait for the training


def test_monitor_on_azure_starts_churn_monitor_and_exits_3_on_its_crossed_verdict(
    local_config, jobs_api, monkeypatch, capsys
):
    verdict = {"verdict": "crossed", "crossed": ["features:Age"], "run_id": "mlflow-run-9", "slot": "prod"}
    jobs_api.next_result = json.dumps(verdict)
    outputs = outputs_for(databricks_host=jobs_api.url, databricks_workspace_id=jobs_api.workspace_resource_id,
                          monitor_job_id=str(jobs_api.job_id))
    monkeypatch.setattr(outputs_module, "load_outputs", lambda *_: outputs)
    monkeypatch.setattr("deploy.platform.azure_auth.credential", lambda *_: credential_for(jobs_api.token))
    monkeypatch.setattr("deploy.platform.jobs.POLL_SECONDS", 0)
    monkeypatch.setattr("deploy.platform.jobs.time.sleep", lambda _: None)

    status = main(["monitor", "--env", "dev", "--config", str(local_config), "--window", "36h", "--json"])

    document = json.loads(capsys.readouterr().out)
    assert status == 3 and document["verdict"] == "crossed" and document["run_id"] == "mlflow-run-9"
    (started,) = jobs_api.calls("POST", "jobs/run-now")
    assert started["body"]["job_id"] == jobs_api.job_id
    assert started["body"]["notebook_params"] == {"slot": "prod", "window": "36h"}
    assert document["job_run"]["state"] == "TERMINATED/SUCCESS"


def test_retrain_on_azure_is_one_line_and_exit_2(local_config, capsys):
    assert main(["monitor", "--env", "dev", "--config", str(local_config), "--retrain"]) == 2
    assert "--retrain is for the local environment" in capsys.readouterr().err
