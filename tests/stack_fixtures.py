"""The synthesized platform stacks, shared by every test module that reads them (registered as a plugin in
conftest.py, so each stack is synthesized once per session).

Besides the shipped dev and prod, a "custom" dev environment turns on every optional feature: federation,
an azurerm state backend, a subscription id, every symbolic role scope, non-default job timeouts and
runtime, a multi-node scoring cluster on its own schedule, alert receivers and thresholds, configured
application owners, and the set-up of a principal whose rights end at a pre-created
resource group (an existing group, no provider registration).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from config import load_all, load_environment
from tests.conftest import PROJECT_ROOT, SHIPPED_CONFIG

CUSTOM_DEV = """
subscription_id = "00000000-0000-0000-0000-00000000abcd"
role_assignments = [
  { role = "Contributor", scope = "resource_group" },
  { role = "AzureML Data Scientist", scope = "ml_workspace" },
  { role = "Storage Blob Data Reader", scope = "ml_storage" },
  { role = "Key Vault Secrets User", scope = "key_vault" },
  { role = "Storage Blob Data Reader", scope = "data_account" },
  { role = "Storage Blob Data Contributor", scope = "data_container" },
]
state_backend = { resource_group = "rg-tfstate", storage_account = "sttfstate001", container = "tfstate" }
key_vault_allowed_ips = ["203.0.113.0/28"]
register_resource_providers = false
existing_resource_group = "rg-platform-churn-dev"
application_owners = ["0A0A0A0A-0000-4000-8000-00000000000A", "0b0b0b0b-0000-4000-8000-00000000000b"]

[environments.dev.training]
job_timeout_minutes = 45

[environments.dev.databricks]
spark_version = "15.4.x-gpu-ml-scala2.12"

[environments.dev.scoring]
workers = 4
node_type = "Standard_D8ds_v5"
schedule = "0 30 2 1 * ?"
timezone = "Europe/Amsterdam"
paused = false
job_timeout_minutes = 240

[environments.dev.monitoring]
paused = false
job_timeout_minutes = 30

[environments.dev.alerts]
emails = ["ml-oncall@contoso.com", "retention@contoso.com"]
p95_latency_ms = 400
error_rate_percent = 2.5
cpu_percent = 70
memory_percent = 75
window_minutes = 30
frequency_minutes = 10

[[environments.dev.federation]]
name = "azure-devops"
issuer = "https://login.microsoftonline.com/00000000-0000-0000-0000-0000000000aa/v2.0"
subject = "/eid1/c/pub/t/qgAAAAAAAAAAAAAAAAAAAA/a/uwAAAAAAAAAAAAAAAAAAAA/sc/\
00000000-0000-0000-0000-0000000000cc/00000000-0000-0000-0000-0000000000dd"

[[environments.dev.federation]]
name = "github-prod"
issuer = "https://token.actions.githubusercontent.com"
subject = "repo:contoso/churn-mlops:environment:churn-dev-prod"
"""


@pytest.fixture(scope="session")
def source_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository, or, while the notebooks are still missing, a throw-away copy with stand-in notebooks."""
    from stacks.databricks import NOTEBOOKS

    if all((PROJECT_ROOT / "notebooks" / f"{name}.py").exists() for name in NOTEBOOKS):
        return PROJECT_ROOT
    root = tmp_path_factory.mktemp("source")
    for entry in ("config", "deploy", "Pipfile.lock"):
        (root / entry).symlink_to(PROJECT_ROOT / entry)
    (root / "notebooks").mkdir()
    for name in NOTEBOOKS:
        (root / "notebooks" / f"{name}.py").write_text(f"# Databricks notebook source\nprint('{name}')\n")
    return root


@pytest.fixture(scope="session")
def custom_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped file with dev's tables replaced by CUSTOM_DEV (dev keeps its prefix and disposability)."""
    text = SHIPPED_CONFIG.read_text()
    start, end = text.index("[environments.dev]\n"), text.index("[environments.prod]\n")
    dev = '[environments.dev]\nprefix = "chrndev"\npurge_protection = false\n'
    path = tmp_path_factory.mktemp("config") / "environments.toml"
    path.write_text(text[:start] + dev + CUSTOM_DEV + "\n" + text[end:])
    return path


def cdk_app(outdir: Path) -> Any:
    """A cdktn test app writing into a pytest folder (left alone, it leaves cdktf.outdir.* folders in TMPDIR)."""
    from cdktn import Testing

    return Testing.app(outdir=str(outdir))


@pytest.fixture(scope="session")
def synthesized(
    source_root: Path, custom_config: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Any, str]]:
    """{"dev" | "prod" | "custom": (EnvConfig, synthesized JSON text)}."""
    pytest.importorskip("cdktn")
    from cdktn import Testing

    from stacks.platform import ChurnPlatformStack

    shipped = load_all()
    envs = {"dev": shipped["dev"], "prod": shipped["prod"], "custom": load_environment("dev", custom_config)}
    return {
        key: (env, Testing.synth(ChurnPlatformStack(
            cdk_app(tmp_path_factory.mktemp(key)), env, source_root=source_root,
            config_file=custom_config if key == "custom" else None,
        )))
        for key, env in envs.items()
    }


@pytest.fixture(scope="session")
def docs(synthesized: dict[str, tuple[Any, str]]) -> dict[str, dict[str, Any]]:
    return {key: json.loads(text) for key, (_, text) in synthesized.items()}


@pytest.fixture(scope="session")
def envs(synthesized: dict[str, tuple[Any, str]]) -> dict[str, Any]:
    return {key: env for key, (env, _) in synthesized.items()}
