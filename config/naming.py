"""Azure naming rules, and every resource name the platform derives from an environment's prefix.

All names live here so that the stacks, the deploy module and the tests agree on them, and so
that a prefix that would break any Azure rule is refused before synthesis, not by an apply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The hackathon guide's web service names, kept as the slot names.
SLOTS = ("stage", "prod")
SLOT_BASE = "churnservice"

PREFIX_RULE = re.compile(r"^[a-z][a-z0-9]{2,9}$")
PREFIX_EXPECTED = "3-10 lowercase letters and digits, starting with a letter"


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    expected: str


# https://learn.microsoft.com/azure/azure-resource-manager/management/resource-name-rules
RULES = {
    "resource_group": Rule(re.compile(r"^[-\w.()]{1,89}[-\w()]$"), "1-90 letters, digits, -_.()"),
    "storage_account": Rule(re.compile(r"^[a-z0-9]{3,24}$"), "3-24 lowercase letters and digits"),
    "key_vault": Rule(
        re.compile(r"^(?!.*--)[A-Za-z][A-Za-z0-9-]{1,22}[A-Za-z0-9]$"),
        "3-24 letters, digits and single hyphens, starting with a letter",
    ),
    "container_registry": Rule(re.compile(r"^[A-Za-z0-9]{5,50}$"), "5-50 letters and digits"),
    "workspace": Rule(
        re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,32}$"), "3-33 letters, digits, - and _"
    ),
    "online_endpoint": Rule(
        re.compile(r"^[A-Za-z][A-Za-z0-9-]{2,31}$"),
        "3-32 letters, digits and hyphens, starting with a letter",
    ),
}


class InvalidName(ValueError):
    """A derived name breaks an Azure rule; carries what the rule expects."""

    def __init__(self, kind: str, name: str, expected: str):
        super().__init__(f"{kind} name '{name}' is invalid; expected {expected}")
        self.kind, self.name, self.expected = kind, name, expected


def check(kind: str, name: str) -> str:
    rule = RULES[kind]
    if not rule.pattern.match(name):
        raise InvalidName(kind, name, rule.expected)
    return name


def endpoint_name(slot: str, prefix: str | None) -> str:
    """`churnservice-<slot>`, suffixed with the prefix: endpoint names are unique per region."""
    if slot not in SLOTS:
        raise ValueError(f"unknown slot '{slot}'; expected one of {', '.join(SLOTS)}")
    name = f"{SLOT_BASE}-{slot}" + (f"-{prefix}" if prefix else "")
    return check("online_endpoint", name)


@dataclass(frozen=True)
class Names:
    """Every Azure name of one environment. Globally unique ones all carry the prefix."""

    resource_group: str
    databricks_workspace: str
    databricks_managed_resource_group: str
    ml_workspace: str
    ml_storage_account: str
    ml_key_vault: str
    container_registry: str
    log_analytics: str
    application_insights: str
    key_vault: str
    data_storage_account: str
    data_container: str
    automation_app: str
    stage_endpoint: str
    prod_endpoint: str

    def endpoint(self, slot: str) -> str:
        return {"stage": self.stage_endpoint, "prod": self.prod_endpoint}[slot]


def derive(prefix: str) -> Names:
    """All names for `prefix`; raises InvalidName for the first one that breaks a rule."""
    return Names(
        resource_group=check("resource_group", f"rg-{prefix}-churn"),
        databricks_workspace=check("workspace", f"dbw-{prefix}"),
        databricks_managed_resource_group=check("resource_group", f"rg-{prefix}-dbw-managed"),
        ml_workspace=check("workspace", f"mlw-{prefix}"),
        ml_storage_account=check("storage_account", f"st{prefix}ml"),
        ml_key_vault=check("key_vault", f"kv-{prefix}-ml"),
        container_registry=check("container_registry", f"cr{prefix}"),
        log_analytics=f"log-{prefix}",
        application_insights=f"appi-{prefix}",
        key_vault=check("key_vault", f"kv-{prefix}-ops"),
        data_storage_account=check("storage_account", f"st{prefix}data"),
        data_container="churndata",
        automation_app=f"sp-{prefix}-churn-automation",
        stage_endpoint=endpoint_name("stage", prefix),
        prod_endpoint=endpoint_name("prod", prefix),
    )
