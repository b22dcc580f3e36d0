"""Diagnostic logs into the environment's Log Analytics workspace, and the alerts read from it.

Every area sends its audit trail there (`send_logs`). The serving slots' online endpoints are created by
`release`, not by Terraform, so no alert rule here can name them as its scope. The rules are log-search
alerts on the Log Analytics workspace instead, which exists at apply time: each queries the tables the
endpoints' diagnostic settings (added by `release`) fill, filtered to this environment's endpoint names,
and fires into one action group whose receivers come from config. Until a slot has served a request the
tables are empty and the rules are quiet; their queries are not validated at creation for that reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdktn_provider_azurerm.log_analytics_workspace import LogAnalyticsWorkspace
from cdktn_provider_azurerm.monitor_action_group import MonitorActionGroup, MonitorActionGroupEmailReceiver
from cdktn_provider_azurerm.monitor_diagnostic_setting import (
    MonitorDiagnosticSetting,
    MonitorDiagnosticSettingEnabledLog,
)
from cdktn_provider_azurerm.monitor_scheduled_query_rules_alert_v2 import (
    MonitorScheduledQueryRulesAlertV2,
    MonitorScheduledQueryRulesAlertV2Action,
    MonitorScheduledQueryRulesAlertV2Criteria,
    MonitorScheduledQueryRulesAlertV2CriteriaFailingPeriods,
)
from constructs import Construct

from config import EnvConfig, naming
from stacks.resource_group import ResourceGroupLike

# Below this many requests in a window, a share of 5xx answers says little (one failure in two is 50%).
MIN_REQUESTS_FOR_ERROR_RATE = 20


def send_logs(
    scope: Construct, id_: str, *, name: str, target_resource_id: str, workspace_id: str, category_group: str
) -> MonitorDiagnosticSetting:
    """Route `category_group` ("audit" or "allLogs") of `target_resource_id` to Log Analytics."""
    return MonitorDiagnosticSetting(
        scope, id_, name=name, target_resource_id=target_resource_id, log_analytics_workspace_id=workspace_id,
        enabled_log=[MonitorDiagnosticSettingEnabledLog(category_group=category_group)],
    )


@dataclass(frozen=True)
class Signal:
    """One alert rule per slot: a KQL query whose `value` column is compared with `threshold`."""

    key: str
    description: str
    severity: int  # 0 critical .. 4 verbose
    threshold: float
    query: str


def slot_signals(env: EnvConfig, endpoint: str) -> list[Signal]:
    """The four health signals of one slot, read from the endpoint's traffic log and its deployments' metrics.

    AmlOnlineEndpointTrafficLog has one row per request (EndpointName, ResponseCode, TotalDurationMs);
    AzureMetrics has the deployments' CpuUtilizationPercentage and CpuMemoryUtilizationPercentage, under
    resource ids .../onlineEndpoints/<endpoint>/deployments/<deployment>.
    """
    alerts = env.alerts
    traffic = f'AmlOnlineEndpointTrafficLog\n| where EndpointName == "{endpoint}"\n'
    deployments = (
        'AzureMetrics\n| where ResourceProvider == "MICROSOFT.MACHINELEARNINGSERVICES"\n'
        f'| where ResourceId contains "/onlineendpoints/{endpoint}/deployments/"\n'
    )
    return [
        Signal("p95-latency", f"p95 request duration above {alerts.p95_latency_ms} ms", 2, alerts.p95_latency_ms,
               traffic + "| summarize value = percentile(TotalDurationMs, 95)"),
        Signal("5xx-rate", f"more than {alerts.error_rate_percent}% of requests answered 5xx", 1,
               alerts.error_rate_percent,
               traffic + "| summarize total = count(), errors = countif(toint(ResponseCode) >= 500)\n"
               f"| where total >= {MIN_REQUESTS_FOR_ERROR_RATE}\n| extend value = 100.0 * errors / total"),
        Signal("cpu", f"a deployment's CPU above {alerts.cpu_percent}%", 2, alerts.cpu_percent,
               deployments + '| where MetricName == "CpuUtilizationPercentage"\n| summarize value = max(Maximum)'),
        Signal("memory", f"a deployment's memory above {alerts.memory_percent}%", 2, alerts.memory_percent,
               deployments + '| where MetricName == "CpuMemoryUtilizationPercentage"\n'
               "| summarize value = max(Maximum)"),
    ]


class ServingAlerts(Construct):
    """The action group every alert and failed job reaches, and each serving slot's alert rules."""

    def __init__(
        self, scope: Construct, id_: str, *, env: EnvConfig, resource_group: ResourceGroupLike,
        log_analytics: LogAnalyticsWorkspace,
    ):
        super().__init__(scope, id_)
        self._env, self._resource_group, self._log_analytics = env, resource_group, log_analytics
        receivers = [
            MonitorActionGroupEmailReceiver(name=f"email-{index}", email_address=email, use_common_alert_schema=True)
            for index, email in enumerate(env.alerts.emails)
        ]
        self.action_group = MonitorActionGroup(
            self, "action_group", name=f"ag-{env.prefix}-churn", resource_group_name=resource_group.name,
            short_name=env.prefix[:12],  # shown in e-mails and texts; Azure allows 12 characters
            email_receiver=receivers or None, tags=env.tags,
        )
        self.rules = {
            (slot, signal.key): self._rule(slot, signal)
            for slot in naming.SLOTS
            for signal in slot_signals(env, env.endpoint_name(slot))
        }

    def _rule(self, slot: str, signal: Signal) -> MonitorScheduledQueryRulesAlertV2:
        env, alerts = self._env, self._env.alerts
        endpoint = env.endpoint_name(slot)
        return MonitorScheduledQueryRulesAlertV2(
            self, f"{slot}_{signal.key.replace('-', '_')}",
            name=f"{endpoint}-{signal.key}", display_name=f"{endpoint}: {signal.description}",
            description=f"Slot {slot} of environment {env.name}: {signal.description} over the last "
            f"{alerts.window_minutes} minutes (config/environments.toml [alerts]).",
            resource_group_name=self._resource_group.name, location=self._resource_group.location,
            scopes=[self._log_analytics.id], severity=signal.severity,
            evaluation_frequency=f"PT{alerts.frequency_minutes}M", window_duration=f"PT{alerts.window_minutes}M",
            criteria=[MonitorScheduledQueryRulesAlertV2Criteria(
                query=signal.query, metric_measure_column="value", time_aggregation_method="Maximum",
                operator="GreaterThan", threshold=signal.threshold,
                failing_periods=MonitorScheduledQueryRulesAlertV2CriteriaFailingPeriods(
                    minimum_failing_periods_to_trigger_alert=1, number_of_evaluation_periods=1,
                ),
            )],
            action=MonitorScheduledQueryRulesAlertV2Action(action_groups=[self.action_group.id]),
            # The tables appear with the first request a slot logs; until then Azure would refuse the query.
            skip_query_validation=True,
            tags=env.tags,
        )
