"""Diagnostic logs into the environment's Log Analytics workspace: who read or changed what, and when."""

from __future__ import annotations

from cdktn_provider_azurerm.monitor_diagnostic_setting import (
    MonitorDiagnosticSetting,
    MonitorDiagnosticSettingEnabledLog,
)
from constructs import Construct


def send_logs(
    scope: Construct, id_: str, *, name: str, target_resource_id: str, workspace_id: str, category_group: str
) -> MonitorDiagnosticSetting:
    """Route `category_group` ("audit" or "allLogs") of `target_resource_id` to Log Analytics."""
    return MonitorDiagnosticSetting(
        scope, id_, name=name, target_resource_id=target_resource_id, log_analytics_workspace_id=workspace_id,
        enabled_log=[MonitorDiagnosticSettingEnabledLog(category_group=category_group)],
    )
