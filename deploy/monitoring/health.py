"""The slot's health over the window: how many requests, how many failed, how fast it answered.

Locally the request log says it all (every request, its status and latency). On Azure the
endpoint's serving deployment reports Azure Monitor metrics (per hour here): `RequestsPerMinute`
split by `envoy_response_code`, and `RequestLatency_P95`, read with azure-mgmt-monitor's metrics API.
A failed request is one answered with status 400 or more; the error rate is their share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from config import EnvConfig
from deploy.monitoring.drift import CROSSED, NOT_ENOUGH_DATA, OK
from deploy.monitoring.window import Window

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from deploy.platform.outputs import StackOutputs

# Latencies fall into log-spaced bins from 0.1 ms to 1000 s (about 2.7% wide), so the p95 of any number of
# requests costs a fixed 600 counters. A percentile is reported as its bin's upper edge.
LATENCY_EDGES_MS = np.logspace(-1, 6, 601)
MIN_REQUESTS = 20  # below this, an error rate or a p95 says little (one failure in two is 50%)
METRIC_INTERVAL = timedelta(hours=1)


@dataclass
class RequestHealth:
    """Accumulates the request log's requests, batch by batch."""

    requests: int = 0
    rows: int = 0
    failed: int = 0
    server_errors: int = 0
    latency_counts: np.ndarray = field(default_factory=lambda: np.zeros(len(LATENCY_EDGES_MS) + 1, dtype=np.int64))
    errors: dict[str, int] = field(default_factory=dict)

    def add(self, requests: pd.DataFrame) -> None:
        """One batch's requests (request_log.RequestBatch.requests: status 0 when the log has none)."""
        if requests.empty:
            return
        status = requests["status"].to_numpy(dtype=np.int64)
        failed = (status >= 400) | (status == 0)
        self.requests += len(status)
        self.failed += int(np.count_nonzero(failed))
        self.server_errors += int(np.count_nonzero(status >= 500))
        self.rows += int(requests["rows"].sum())
        for error, code in zip(requests["error"].to_numpy(dtype=object)[failed], status[failed], strict=True):
            kind = (error if isinstance(error, str) and error else f"status {code}").split(":")[0][:60]
            self.errors[kind] = self.errors.get(kind, 0) + 1
        latencies = requests["latency_ms"].to_numpy(dtype=float)
        latencies = latencies[~np.isnan(latencies)]
        if len(latencies):
            bins = np.searchsorted(LATENCY_EDGES_MS, latencies, side="left")
            self.latency_counts += np.bincount(bins, minlength=len(self.latency_counts))

    def percentile(self, share: float) -> float | None:
        total = int(self.latency_counts.sum())
        if not total:
            return None
        index = int(np.searchsorted(np.cumsum(self.latency_counts), share * total))
        return float(LATENCY_EDGES_MS[min(index, len(LATENCY_EDGES_MS) - 1)])

    def summary(self, env: EnvConfig, source: str) -> dict[str, Any]:
        return judge(env, source, self.requests, self.failed, self.server_errors, self.percentile(0.95),
                     p50=self.percentile(0.5), rows=self.rows, errors=dict(sorted(self.errors.items())))


def judge(env: EnvConfig, source: str, requests: int, failed: int, server_errors: int, p95: float | None,
          **extra: Any) -> dict[str, Any]:
    thresholds = env.monitoring
    document: dict[str, Any] = {
        "source": source, "requests": requests, "failed": failed, "server_errors": server_errors,
        "error_rate": failed / requests if requests else None, "p95_latency_ms": p95,
        "thresholds": {"error_rate": thresholds.max_error_rate, "p95_latency_ms": thresholds.max_p95_latency_ms},
        **extra,
    }
    if requests < MIN_REQUESTS:
        return {**document, "status": NOT_ENOUGH_DATA, "crossed": []}
    crossed = []
    if document["error_rate"] > thresholds.max_error_rate:
        crossed.append("error_rate")
    if p95 is not None and p95 > thresholds.max_p95_latency_ms:
        crossed.append("p95_latency_ms")
    return {**document, "status": CROSSED if crossed else OK, "crossed": crossed}


def deployment_resource_id(outputs: StackOutputs, endpoint: str, deployment: str) -> str:
    return (
        f"/subscriptions/{outputs.subscription_id}/resourceGroups/{outputs.resource_group}/providers/"
        f"Microsoft.MachineLearningServices/workspaces/{outputs.ml_workspace_name}/onlineEndpoints/{endpoint}"
        f"/deployments/{deployment}"
    )


def monitor_client(env: EnvConfig, outputs: StackOutputs, credential: TokenCredential) -> Any:
    from azure.mgmt.monitor import MonitorManagementClient

    from deploy.platform.azure_auth import scope

    return MonitorManagementClient(
        credential, outputs.subscription_id, base_url=env.cloud.resource_manager,
        credential_scopes=[scope(env.cloud.resource_manager)],
    )


def endpoint_health(env: EnvConfig, client: Any, resource_id: str, window: Window) -> dict[str, Any]:
    """The serving deployment's requests, failures and p95 latency from Azure Monitor, hour by hour."""
    timespan = f"{window.start.isoformat()}/{window.end.isoformat()}"
    interval = f"PT{int(METRIC_INTERVAL.total_seconds() // 3600)}H"
    counted = client.metrics.list(
        resource_id, timespan=timespan, interval=interval, metricnames="RequestsPerMinute", aggregation="Average",
        filter="envoy_response_code eq '*'",
    )
    requests = failed = server_errors = 0.0
    per_hour: dict[Any, float] = {}
    for metric in counted.value:
        for series in metric.timeseries or []:
            code = _dimension(series, "envoy_response_code")
            for point in series.data or []:
                count = (point.average or 0.0) * 60  # a per-minute average over an hour
                requests += count
                per_hour[point.time_stamp] = per_hour.get(point.time_stamp, 0.0) + count
                if code >= 400:
                    failed += count
                if code >= 500:
                    server_errors += count
    latency = client.metrics.list(
        resource_id, timespan=timespan, interval=interval, metricnames="RequestLatency_P95", aggregation="Average",
    )
    weighted = weight = 0.0
    for metric in latency.value:
        for series in metric.timeseries or []:
            for point in series.data or []:
                if point.average is None:
                    continue
                hour_requests = per_hour.get(point.time_stamp, 0.0)
                weighted += point.average * hour_requests
                weight += hour_requests
    p95 = weighted / weight if weight else None
    return judge(env, "azure-monitor", round(requests), round(failed), round(server_errors), p95,
                 resource=resource_id, p95_note="request-weighted mean of the hourly RequestLatency_P95")


def _dimension(series: Any, name: str) -> int:
    for item in series.metadatavalues or []:
        if (item.name.value or "").lower() == name and str(item.value).isdigit():
            return int(item.value)
    return 0
