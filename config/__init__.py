"""The environments: one typed, frozen `EnvConfig` each, loaded and validated in this one place.

`environments.toml` holds the settings; `schema.json` says which keys exist and what they accept.
Everything that reads configuration (the CDK app, the deploy CLI, the notebooks) goes through
`load_environment` or `load_all`, so a bad file fails the same way everywhere: one `ConfigError`
naming the environment, the key and what is expected.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config import naming

CONFIG_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = CONFIG_DIR.parent
DEFAULT_CONFIG_FILE = CONFIG_DIR / "environments.toml"
CONFIG_ENV_VAR = "CHURN_CONFIG"

# Roles the automation identity may never hold, whatever the config says: each can grant access.
# Compared case-insensitively, as Azure resolves role names.
FORBIDDEN_ROLES = frozenset({"owner", "user access administrator", "role based access control administrator"})

# Public regions plus the sovereign ones; `az account list-locations -o tsv --query [].name`.
AZURE_REGIONS = frozenset(
    """
    australiacentral australiacentral2 australiaeast australiasoutheast austriaeast belgiumcentral
    brazilsouth brazilsoutheast canadacentral canadaeast centralindia centralus chilecentral
    denmarkeast eastasia eastus eastus2 francecentral francesouth germanynorth germanywestcentral
    indonesiacentral israelcentral italynorth japaneast japanwest koreacentral koreasouth
    malaysiawest mexicocentral newzealandnorth northcentralus northeurope norwayeast norwaywest
    polandcentral qatarcentral southafricanorth southafricawest southcentralus southindia
    southeastasia spaincentral swedencentral switzerlandnorth switzerlandwest uaecentral uaenorth
    uksouth ukwest westcentralus westeurope westindia westus westus2 westus3
    usgovarizona usgovtexas usgovvirginia usdodcentral usdodeast
    chinaeast chinaeast2 chinaeast3 chinanorth chinanorth2 chinanorth3
    """.split()  # noqa: SIM905 - a word list reads better than 66 quoted strings
)


@dataclass(frozen=True)
class CloudEndpoints:
    """Where the SDKs authenticate and call; overridable for sovereign clouds and for tests."""

    name: str
    authority_host: str
    graph: str
    resource_manager: str
    key_vault_resource: str
    storage_suffix: str  # storage accounts' DNS suffix: <account>.dfs.<suffix>
    # The classic service management endpoint: the audience of the management token Databricks takes from
    # a service principal that is not yet a workspace user (X-Databricks-Azure-SP-Management-Token).
    service_management: str


CLOUDS = {
    "AzureCloud": CloudEndpoints(
        "AzureCloud",
        "https://login.microsoftonline.com",
        "https://graph.microsoft.com",
        "https://management.azure.com",
        "https://vault.azure.net",
        "core.windows.net",
        "https://management.core.windows.net/",
    ),
    "AzureUSGovernment": CloudEndpoints(
        "AzureUSGovernment",
        "https://login.microsoftonline.us",
        "https://graph.microsoft.us",
        "https://management.usgovcloudapi.net",
        "https://vault.usgovcloudapi.net",
        "core.usgovcloudapi.net",
        "https://management.core.usgovcloudapi.net/",
    ),
    "AzureChinaCloud": CloudEndpoints(
        "AzureChinaCloud",
        "https://login.chinacloudapi.cn",
        "https://microsoftgraph.chinacloudapi.cn",
        "https://management.chinacloudapi.cn",
        "https://vault.azure.cn",
        "core.chinacloudapi.cn",
        "https://management.core.chinacloudapi.cn/",
    ),
}
# The AzureDatabricks first-party application, the same in every tenant: the audience of Entra ID
# tokens for any Databricks workspace, and the reader of Key Vault-backed secret scopes. Its service
# principal's object id differs per tenant, so the stack looks that up.
AZURE_DATABRICKS_APP_ID = "2ff814a6-3304-4ab8-85cb-cd0e6f879c1d"

# The azurerm / azuread providers' names for the same clouds.
TERRAFORM_ENVIRONMENT = {"AzureCloud": "public", "AzureUSGovernment": "usgovernment", "AzureChinaCloud": "china"}


class ConfigError(Exception):
    """Bad configuration: the CLI and the CDK app print it as one line and exit with status 2."""

    def __init__(self, env: str | None, key: str | None, problem: str):
        where = " ".join(
            part for part in (f"environment '{env}'" if env else "", f"key '{key}'" if key else "") if part
        )
        super().__init__(f"config error: {where + ': ' if where else ''}{problem}")
        self.env, self.key, self.problem = env, key, problem


@dataclass(frozen=True)
class RoleAssignment:
    role: str
    scope: str  # symbolic: resource_group, ml_workspace, ml_storage, key_vault, data_account, data_container


@dataclass(frozen=True)
class FederatedCredential:
    """One who may sign in as the automation identity without a secret: an Azure DevOps service
    connection or a GitHub Actions job, named by its token's issuer and subject (schema.json lists
    the accepted pairs). The stack creates one federated identity credential per entry."""

    name: str
    issuer: str
    subject: str


@dataclass(frozen=True)
class StateBackend:
    resource_group: str
    storage_account: str
    container: str


@dataclass(frozen=True)
class Gate:
    min_auc: float = 0.80
    max_auc_drop: float = 0.01
    # The champion's AUC on a candidate's test set may fall this far below its AUC on its own test set;
    # further means the candidate's data or labels changed.
    max_champion_drop: float = 0.10


@dataclass(frozen=True)
class LockPolicy:
    wait_seconds: float = 900.0  # how long a release, rollback or down waits for another one on the slot


@dataclass(frozen=True)
class Validation:
    rows: int = 50
    max_p95_ms: float = 1500.0


@dataclass(frozen=True)
class Serving:
    instance_type: str = "Standard_DS3_v2"
    instance_count: int = 1


@dataclass(frozen=True)
class SecretPolicy:
    name: str = "automation-client-secret"
    lifetime_days: int = 90
    overlap_hours: float = 24.0
    warn_days: int = 21
    token_retry_seconds: float = 300.0


@dataclass(frozen=True)
class DatabricksSettings:
    # Pinned, never "latest LTS": the 15.4 LTS ML line runs Spark 3.5 and Python 3.11, as the local pyspark does.
    spark_version: str = "15.4.x-cpu-ml-scala2.12"


@dataclass(frozen=True)
class Scoring:
    """The churn-score job: its cluster (a bigger customer base is a config change) and its schedule."""

    workers: int = 0  # 0: one node
    node_type: str = ""  # empty: the smallest with a local disk
    schedule: str = "0 0 5 ? * MON"  # Quartz: every Monday 05:00
    timezone: str = "UTC"
    paused: bool = False
    job_timeout_minutes: int = 120


@dataclass(frozen=True)
class Alerts:
    """Who hears about failures, and the thresholds of each serving slot's alert rules."""

    emails: tuple[str, ...] = ()
    p95_latency_ms: int = 1000
    error_rate_percent: float = 5.0
    cpu_percent: int = 85
    memory_percent: int = 85
    window_minutes: int = 15
    frequency_minutes: int = 5


@dataclass(frozen=True)
class Training:
    job_timeout_minutes: int = 60


@dataclass(frozen=True)
class Monitoring:
    """What `monitor` judges a slot by, and the churn-monitor job's schedule."""

    schedule: str = "0 0 6 * * ?"  # Quartz: every day 06:00
    timezone: str = "UTC"
    paused: bool = False
    job_timeout_minutes: int = 60

    min_rows: int = 200  # fewer rows in the window: "not enough data", never "no drift"
    drift_distance: float = 0.1  # Jensen-Shannon distance (base 2) above which a distribution moved...
    drift_p_value: float = 0.01  # ...if the test (KS or chi-square) also says it is not sampling noise
    max_null_share: float = 0.01
    max_out_of_range_share: float = 0.05  # numeric values outside the training split's range
    max_unseen_share: float = 0.01  # categories the training split never had
    max_error_rate: float = 0.05  # failed requests (status >= 400) over all requests
    max_p95_latency_ms: float = 1000.0
    min_outcomes: int = 100  # labeled customers a scoring date needs before its realized AUC counts
    outcome_lookback_days: int = 180  # how far back past scores are joined to outcomes


@dataclass(frozen=True)
class LocalSettings:
    state_dir: Path = PROJECT_ROOT / ".state" / "local"
    stage_port: int = 5301
    prod_port: int = 5302

    def port(self, slot: str) -> int:
        return {"stage": self.stage_port, "prod": self.prod_port}[slot]


@dataclass(frozen=True)
class EnvConfig:
    """One environment, validated. `kind == "local"` has no prefix, names, cloud or stack."""

    name: str
    kind: str
    prefix: str | None
    location: str
    cloud: CloudEndpoints
    subscription_id: str | None
    tags: dict[str, str]
    purge_protection: bool
    outputs_file: Path
    key_vault_allowed_ips: tuple[str, ...] = ()
    register_resource_providers: bool = True
    existing_resource_group: str | None = None  # pre-created; the stack looks it up instead of creating it
    application_owners: tuple[str, ...] = ()  # object ids, lower case; empty: whoever runs apply
    role_assignments: tuple[RoleAssignment, ...] = ()
    federation: tuple[FederatedCredential, ...] = ()
    state_backend: StateBackend | None = None
    gate: Gate = field(default_factory=Gate)
    validation: Validation = field(default_factory=Validation)
    serving: Serving = field(default_factory=Serving)
    secret: SecretPolicy = field(default_factory=SecretPolicy)
    training: Training = field(default_factory=Training)
    locks: LockPolicy = field(default_factory=LockPolicy)
    databricks: DatabricksSettings = field(default_factory=DatabricksSettings)
    scoring: Scoring = field(default_factory=Scoring)
    monitoring: Monitoring = field(default_factory=Monitoring)
    alerts: Alerts = field(default_factory=Alerts)
    local: LocalSettings = field(default_factory=LocalSettings)
    names: naming.Names | None = None

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    @property
    def disposable(self) -> bool:
        """Torn down and re-created (dev): no purge protection, so `destroy` purges and clears everything."""
        return not self.purge_protection

    @property
    def stack_name(self) -> str:
        return f"churn-{self.name}"

    @property
    def terraform_environment(self) -> str:
        return TERRAFORM_ENVIRONMENT[self.cloud.name]

    def endpoint_name(self, slot: str) -> str:
        return naming.endpoint_name(slot, self.prefix)


def config_path(path: str | os.PathLike[str] | None = None) -> Path:
    return Path(path or os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_FILE)


def load_all(path: str | os.PathLike[str] | None = None) -> dict[str, EnvConfig]:
    """Every environment in the file, validated together (prefixes must not collide)."""
    raw = _read(config_path(path))
    defaults = raw.get("defaults", {})
    envs = {name: _build(name, _merge(defaults, table)) for name, table in raw["environments"].items()}
    seen: dict[str, str] = {}
    for env in envs.values():
        if env.prefix is None:
            continue
        if env.prefix in seen:
            raise ConfigError(
                env.name, "prefix", f"'{env.prefix}' is already used by environment '{seen[env.prefix]}'; "
                "expected a prefix unique to this environment (globally unique names derive from it)",
            )
        seen[env.prefix] = env.name
    return envs


def load_environment(name: str, path: str | os.PathLike[str] | None = None) -> EnvConfig:
    envs = load_all(path)
    if name not in envs:
        raise ConfigError(name, None, f"no such environment; expected one of {', '.join(sorted(envs))}")
    return envs[name]


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(None, None, f"{path} not found; expected the environments file (TOML)") from None
    except IsADirectoryError:
        raise ConfigError(None, None, f"{path} is a directory; expected the environments file (TOML)") from None
    except UnicodeDecodeError:
        raise ConfigError(None, None, f"{path} is not UTF-8 text; expected the environments file (TOML)") from None
    except OSError as exc:
        raise ConfigError(None, None, f"{path} cannot be read ({exc.strerror}); expected the environments file") \
            from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(None, None, f"{path} is not valid TOML: {exc}") from None
    unknown = set(raw) - {"defaults", "environments"}
    if unknown:
        raise ConfigError(
            None, sorted(unknown)[0], "unknown top-level table; expected [defaults] or [environments.<name>]"
        )
    if not isinstance(raw.get("defaults", {}), dict):
        raise ConfigError(None, "defaults", "is not a table; expected [defaults] with keys for every Azure environment")
    if not isinstance(raw.get("environments"), dict) or not raw["environments"]:
        raise ConfigError(None, "environments", "missing; expected at least one [environments.<name>] table")
    for name, table in raw["environments"].items():
        if not isinstance(table, dict):
            raise ConfigError(
                name, None, f"is {type(table).__name__} {table!r}, not a table; expected [environments.{name}]"
            )
    return raw


def _merge(defaults: dict[str, Any], table: dict[str, Any]) -> dict[str, Any]:
    if table.get("kind") == "local":
        return dict(table)  # local runs no cloud, so the Azure defaults don't apply to it
    merged = dict(defaults)
    for key, value in table.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "tags":
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


_SCHEMA: dict[str, Any] | None = None


def _validate_schema(env: str, table: dict[str, Any]) -> None:
    import jsonschema  # imported here: only commands that read config pay for it

    global _SCHEMA
    if _SCHEMA is None:
        _SCHEMA = json.loads((CONFIG_DIR / "schema.json").read_text())
    if isinstance(table.get("federation"), dict):  # the single table of earlier versions
        raise ConfigError(
            env, "federation", f"is a list of credentials; expected [[environments.{env}.federation]] tables, "
            'each with name, issuer and subject (an earlier single table becomes one with name = "azure-devops")',
        )
    error = jsonschema.exceptions.best_match(_strict_validator()(_SCHEMA).iter_errors(table))
    if error is None:
        return
    key = ".".join(str(part) for part in error.absolute_path) or None
    pairing = next((e for e in _lineage(error) if e.validator == "anyOf" and "federation" in e.absolute_path), None)
    if pairing is not None:  # issuer and subject fit none of the forms schema.json documents
        item, forms = pairing.instance, pairing.schema["anyOf"]
        # A known issuer narrows the forms to its own; otherwise every form is listed.
        issuer_fits = [jsonschema.Draft202012Validator(form["properties"]["issuer"]) for form in forms]
        known = [form for form, fits in zip(forms, issuer_fits, strict=True) if fits.is_valid(item["issuer"])]
        forms = "; or ".join(form["description"] for form in known or forms)
        raise ConfigError(
            env, f"federation[{pairing.absolute_path[-1]}]",
            f"issuer '{item['issuer']}' with subject '{item['subject']}' is not an accepted pair; expected {forms}",
        )
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        key = ".".join(filter(None, [key, extra[0] if extra else None]))
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        raise ConfigError(env, key, f"unknown key; expected one of {allowed}")
    raise ConfigError(env, key, f"{error.message}")


def _strict_validator() -> Any:
    """Draft 2020-12, except that an integer is an integer: JSON Schema counts 6301.0 as one, and a port or
    a row count that TOML reads as a float would reach a socket or a slice as a float."""
    import jsonschema

    def is_integer(_: Any, instance: Any) -> bool:
        return isinstance(instance, int) and not isinstance(instance, bool)

    base = jsonschema.Draft202012Validator
    return jsonschema.validators.extend(base, type_checker=base.TYPE_CHECKER.redefine("integer", is_integer))


def _lineage(error: Any) -> Iterator[Any]:
    """A schema error and the errors it sits under (anyOf branches report below their anyOf)."""
    while error is not None:
        yield error
        error = error.parent


def _federation(env: str, items: list[dict[str, str]]) -> tuple[FederatedCredential, ...]:
    """The credentials, each name and each issuer-subject pair once (Entra ID refuses a repeated pair)."""
    credentials = tuple(FederatedCredential(**item) for item in items)
    first: dict[object, int] = {}
    for index, credential in enumerate(credentials):
        for what, value in (("name", credential.name), ("issuer and subject", (credential.issuer, credential.subject))):
            if (what, value) in first:
                raise ConfigError(
                    env, f"federation[{index}]",
                    f"repeats the {what} of federation[{first[what, value]}]; expected each credential once",
                )
            first[what, value] = index
    return credentials


def _build(name: str, table: dict[str, Any]) -> EnvConfig:
    _validate_schema(name, table)
    kind = table.get("kind", "azure")
    cloud = CLOUDS[table.get("cloud", "AzureCloud")]
    cloud = CloudEndpoints(cloud.name, **{**_endpoint_fields(cloud), **table.get("endpoints", {})})
    common = dict(
        name=name,
        kind=kind,
        cloud=cloud,
        tags={**table.get("tags", {}), "environment": name},
        gate=Gate(**table.get("gate", {})),
        validation=Validation(**table.get("validation", {})),
        serving=Serving(**table.get("serving", {})),
        secret=SecretPolicy(**table.get("secret", {})),
        training=Training(**table.get("training", {})),
        locks=LockPolicy(**table.get("locks", {})),
        databricks=DatabricksSettings(**table.get("databricks", {})),
        scoring=_scheduled(name, "scoring", Scoring(**table.get("scoring", {}))),
        monitoring=_scheduled(name, "monitoring", Monitoring(**table.get("monitoring", {}))),
        alerts=_alerts(name, table.get("alerts", {})),
    )
    if kind == "local":
        local = dict(table.get("local", {}))
        if "state_dir" in local:
            local["state_dir"] = PROJECT_ROOT / local["state_dir"]
        settings = LocalSettings(**local)
        if settings.stage_port == settings.prod_port:
            raise ConfigError(name, "local.prod_port", "equals local.stage_port; expected one port per slot")
        return EnvConfig(
            **common, prefix=None, location="local", subscription_id=None, purge_protection=False,
            outputs_file=settings.state_dir / "outputs.json", local=settings,
        )

    for key in ("prefix", "location"):
        if not table.get(key):
            raise ConfigError(name, key, "missing; expected a value here or in [defaults]")
    prefix = table["prefix"]
    if not naming.PREFIX_RULE.match(prefix):
        raise ConfigError(name, "prefix", f"'{prefix}' is invalid; expected {naming.PREFIX_EXPECTED}")
    try:
        names = naming.derive(prefix)
    except naming.InvalidName as exc:
        raise ConfigError(name, "prefix", str(exc)) from None
    if table["location"] not in AZURE_REGIONS:
        raise ConfigError(
            name, "location", f"'{table['location']}' is not an Azure region; expected a name like westeurope"
        )
    roles = tuple(RoleAssignment(**item) for item in table.get("role_assignments", []))
    for index, assignment in enumerate(roles):
        if assignment.role.casefold() in FORBIDDEN_ROLES:
            raise ConfigError(
                name, f"role_assignments[{index}].role",
                f"'{assignment.role}' can grant access; expected a least-privilege role (Contributor at most)",
            )
    return EnvConfig(
        **common,
        prefix=prefix,
        location=table["location"],
        subscription_id=table.get("subscription_id"),
        purge_protection=table.get("purge_protection", True),
        key_vault_allowed_ips=tuple(table.get("key_vault_allowed_ips", ())),
        register_resource_providers=table.get("register_resource_providers", True),
        existing_resource_group=table.get("existing_resource_group"),
        application_owners=tuple(owner.lower() for owner in table.get("application_owners", ())),
        outputs_file=PROJECT_ROOT / table.get("outputs_file", f"outputs/churn-{name}.json"),
        role_assignments=roles,
        federation=_federation(name, table.get("federation", [])),
        state_backend=StateBackend(**table["state_backend"]) if "state_backend" in table else None,
        names=names,
    )


def _scheduled(env: str, key: str, job: Scoring | Monitoring) -> Scoring | Monitoring:
    """Databricks' Quartz cron asks for '?' in exactly one of day-of-month and day-of-week."""
    fields_ = job.schedule.split()
    if (fields_[3] == "?") == (fields_[5] == "?"):
        raise ConfigError(env, f"{key}.schedule", f"'{job.schedule}' is not a Quartz cron Databricks takes; expected "
                          "'?' in exactly one of day-of-month (4th field) and day-of-week (6th), e.g. '0 0 5 ? * MON'")
    return job


def _alerts(env: str, table: dict[str, Any]) -> Alerts:
    alerts = Alerts(**{**table, "emails": tuple(table.get("emails", ()))})
    if alerts.frequency_minutes > alerts.window_minutes:
        raise ConfigError(env, "alerts.frequency_minutes", f"{alerts.frequency_minutes} is longer than "
                          f"window_minutes ({alerts.window_minutes}); expected at most window_minutes, so no "
                          "minute goes unevaluated")
    return alerts


def _endpoint_fields(cloud: CloudEndpoints) -> dict[str, str]:
    return {key: value for key, value in cloud.__dict__.items() if key != "name"}
