"""The live suite's plumbing: what it needs, the throwaway environment it defines, and what it will cost.

Everything here runs offline (tests/live/test_harness.py checks it in `make test`); only the live tests
themselves reach Azure, through the project's own entry points: the Makefile's infra targets and
`python -m deploy`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import string
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from config import EnvConfig, naming

CONFIRM_VARIABLE = "LIVE_CONFIRM"  # must be "yes": the suite creates billable resources
BASE_VARIABLE = "LIVE_ENV"  # the environment whose region, cloud and subscription the throwaway one copies
ALLOWED_IPS_VARIABLE = "LIVE_ALLOWED_IPS"  # this machine's public address(es), for the vault firewall
PREFIX_ALPHABET = string.ascii_lowercase + string.digits


def missing_requirements(
    environ: Mapping[str, str], which: Callable[[str], str | None] = shutil.which,
    signed_in: Callable[[], bool] | None = None, base: EnvConfig | None = None,
) -> list[str]:
    """What keeps the live suite from running here, in the words of its one skip line; empty: it can run."""
    missing = []
    if environ.get(CONFIRM_VARIABLE) != "yes":
        missing.append(f"{CONFIRM_VARIABLE}=yes (it creates billable resources; read the estimate above)")
    if which("terraform") is None:
        missing.append("terraform 1.14.x on PATH")
    if which("az") is None:
        missing.append("the Azure CLI (az) on PATH")
    elif not (signed_in or azure_cli_signed_in)():
        missing.append("an Azure CLI sign-in with the runbook's permissions (az login; az account set -s <id>)")
    if base is not None and not allowed_ips(environ, base):
        missing.append(f"{ALLOWED_IPS_VARIABLE}=<this machine's public IP> (the vault firewall admits no one else)")
    return missing


def skip_reason(missing: list[str]) -> str:
    return "live suite needs " + "; ".join(missing)


def azure_cli_signed_in() -> bool:
    try:
        return subprocess.run([tool("az"), "account", "show", "-o", "none"], capture_output=True,
                              timeout=60).returncode == 0
    except (StepFailed, OSError, subprocess.TimeoutExpired):
        return False


def tool(name: str) -> str:
    """The full path of a command the suite runs (make, az)."""
    path = shutil.which(name)
    if path is None:
        raise StepFailed(f"{name} is not on PATH")
    return path


def allowed_ips(environ: Mapping[str, str], base: EnvConfig) -> list[str]:
    given = [ip.strip() for ip in environ.get(ALLOWED_IPS_VARIABLE, "").split(",") if ip.strip()]
    return given or list(base.key_vault_allowed_ips)


@dataclass(frozen=True)
class Throwaway:
    """A disposable environment with a random prefix, written into a copy of the environments file."""

    name: str
    prefix: str
    config_file: Path

    @property
    def stack_name(self) -> str:
        return f"churn-{self.name}"


def random_prefix(token: Callable[[int], str] | None = None) -> str:
    """`lv` and six random letters or digits: a valid prefix no committed environment uses."""
    pick = token or (lambda n: "".join(secrets.choice(PREFIX_ALPHABET) for _ in range(n)))
    prefix = "lv" + pick(6)
    naming.derive(prefix)  # raises InvalidName if some derived name would break an Azure rule
    return prefix


def write_throwaway(base: EnvConfig, shipped: Path, folder: Path, ips: list[str], prefix: str) -> Throwaway:
    """The shipped environments plus one disposable environment copying `base`'s place in Azure."""
    table = {
        "prefix": prefix,
        "location": base.location,
        "cloud": base.cloud.name,
        "purge_protection": False,  # disposable: destroy purges everything, so nothing outlives the suite
        "key_vault_allowed_ips": ips,
        "register_resource_providers": base.register_resource_providers,
    }
    if base.subscription_id:
        table["subscription_id"] = base.subscription_id
    if base.existing_resource_group:
        table["existing_resource_group"] = base.existing_resource_group
    if base.application_owners:
        table["application_owners"] = list(base.application_owners)
    lines = [f"{key} = {json.dumps(value)}" for key, value in table.items()]  # JSON scalars and lists are TOML
    path = folder / "environments.toml"
    path.write_text(shipped.read_text().rstrip() + f"\n\n[environments.{prefix}]\n" + "\n".join(lines) + "\n")
    return Throwaway(name=prefix, prefix=prefix, config_file=path)


# Rough list prices (USD, West Europe, pay as you go, late 2026); the Azure pricing calculator has today's.
HOURLY_PRICE = {"Standard_DS3_v2": 0.33, "Standard_DS4_v2": 0.66, "Standard_F4s_v2": 0.21}
DATABRICKS_JOB_HOUR = 0.60  # a small single-node jobs cluster: the VM plus premium jobs DBUs
FIXED_PER_DAY = 0.80  # container registry Standard, Log Analytics ingestion, storage, vaults


def estimate(base: EnvConfig) -> list[str]:
    """What one run of the suite costs and how long it takes, printed before anything is created."""
    instance = base.serving.instance_type
    endpoint_hours = 1.0  # the stage deployment lives from release until teardown
    endpoint = HOURLY_PRICE.get(instance, 0.5) * base.serving.instance_count * endpoint_hours
    jobs = DATABRICKS_JOB_HOUR * 0.5  # one training run, cluster start and library installs included
    total = endpoint + jobs + FIXED_PER_DAY / 24 * 2
    priced = "" if instance in HOURLY_PRICE else f" ({instance} priced as a guess)"
    return [
        f"live suite: a throwaway environment like '{base.name}' ({base.location}), torn down at the end",
        f"  cost: about ${total:.2f}{priced}: the stage endpoint ({base.serving.instance_count} x {instance}, ~1 h), "
        "one Databricks training run, an hour or two of storage, registry and logs",
        "  time: 60-100 minutes: deploy 15-25, first secret 1, train 10-20, release 15-25, rotate 1, status 1, "
        "destroy 15-25",
        f"  it runs only with {CONFIRM_VARIABLE}=yes; a run cut short leaves the stack: make infra-destroy ENV=<name> "
        "with CHURN_CONFIG pointing at the environments file it printed",
    ]


def run(command: list[str], throwaway: Throwaway, timeout_minutes: int, capture: bool = False) -> str:
    """One step through the project's own entry points, against the throwaway environments file."""
    environ = {**os.environ, "CHURN_CONFIG": str(throwaway.config_file)}
    result = subprocess.run(
        command, env=environ, stdout=subprocess.PIPE if capture else None, text=True, timeout=timeout_minutes * 60,
    )
    if result.returncode != 0:
        raise StepFailed(f"{' '.join(command)} exited with {result.returncode}")
    return result.stdout or ""


class StepFailed(Exception):
    """A live step failed; the suite skips what depends on it and still tears everything down."""
