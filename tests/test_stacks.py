"""Synthesis tests of the platform stacks: every resource exists and is wired to this environment's others.

The stacks are synthesized once per session (tests/stack_fixtures.py: the shipped dev and prod, and a
"custom" dev environment with every optional feature on). Terraform itself cannot run here (no provider
downloads), so these tests check the synthesized JSON, the contract Terraform would receive;
tests/test_provider_schema.py checks the same JSON against the providers' own schemas.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import main
from config import ConfigError, load_all, load_environment
from deploy.platform.outputs import OUTPUT_NAMES
from tests.conftest import PROJECT_ROOT, SHIPPED_CONFIG

pytest.importorskip("cdktn")
from cdktn import Testing as CdkTesting

from config import AZURE_DATABRICKS_APP_ID
from stacks import summary
from stacks.databricks import (
    MODEL_LIBRARIES,
    NOTEBOOKS,
    SECRET_SCOPE,
    WORKSPACE_ROOT,
    MissingSource,
    project_files,
)
from stacks.monitoring import MIN_REQUESTS_FOR_ERROR_RATE
from stacks.platform import RESOURCE_PROVIDERS, TERRAFORM_VERSION, ChurnPlatformStack
from tests.stack_fixtures import cdk_app

SCOPE_TYPES = {
    "resource_group": "azurerm_resource_group",
    "ml_workspace": "azurerm_machine_learning_workspace",
    "ml_storage": "azurerm_storage_account",
    "key_vault": "azurerm_key_vault",
    "data_account": "azurerm_storage_account",
    "data_container": "azurerm_storage_container",
}
GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


# The fixtures source_root, custom_config, synthesized, docs and envs come from tests/stack_fixtures.py.
ALL = pytest.mark.parametrize("key", ["dev", "prod", "custom"])


# --- helpers ------------------------------------------------------------------------------------


def of_type(doc: dict[str, Any], kind: str, block: str = "resource") -> dict[str, dict[str, Any]]:
    return doc.get(block, {}).get(kind, {})


def one(doc: dict[str, Any], kind: str, block: str = "resource", **match: Any) -> tuple[str, dict[str, Any]]:
    """The single `kind` block whose attributes equal `match`, as (logical id, attributes)."""
    found = [(lid, attrs) for lid, attrs in of_type(doc, kind, block).items()
             if all(attrs.get(key) == value for key, value in match.items())]
    assert len(found) == 1, f"expected one {kind} matching {match}, found {[lid for lid, _ in found]}"
    return found[0]


def ref(kind: str, logical_id: str, attribute: str) -> str:
    return f"${{{kind}.{logical_id}.{attribute}}}"


def local_value(doc: dict[str, Any], expression: str) -> str:
    """The expression behind `${local.x}`."""
    name = re.fullmatch(r"\$\{local\.([\w-]+)\}", expression)
    assert name, f"{expression} is not a local reference"
    return doc["locals"][name.group(1)]


def group_reference(doc: dict[str, Any], attribute: str) -> str:
    """`${...}` of the environment's resource group: the stack's own, or the existing one it looked up."""
    if "azurerm_resource_group" in doc["resource"]:
        return ref("azurerm_resource_group", one(doc, "azurerm_resource_group")[0], attribute)
    return ref("data.azurerm_resource_group", one(doc, "azurerm_resource_group", block="data")[0], attribute)


def ops_vault(doc: dict[str, Any], env: Any) -> str:
    return one(doc, "azurerm_key_vault", name=env.names.key_vault)[0]


def automation_app(doc: dict[str, Any]) -> str:
    return one(doc, "azuread_application")[0]


def strings(node: Any):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


# --- stack-wide ---------------------------------------------------------------------------------


@ALL
def test_outputs_are_exactly_the_contract_and_none_is_sensitive(docs, key):
    outputs = docs[key]["output"]
    assert sorted(outputs) == sorted(OUTPUT_NAMES)
    assert not any(output.get("sensitive") for output in outputs.values())


@ALL
def test_outputs_point_at_this_stacks_resources(docs, envs, key):
    doc, env = docs[key], envs[key]
    outputs = {name: output["value"] for name, output in doc["output"].items()}
    workspace = one(doc, "azurerm_databricks_workspace")[0]
    ml = one(doc, "azurerm_machine_learning_workspace", name=env.names.ml_workspace)[0]
    data = one(doc, "azurerm_storage_account", name=env.names.data_storage_account)[0]
    assert outputs["client_secret_name"] == env.secret.name
    assert outputs["tenant_id"] == ref("data.azurerm_client_config", "client", "tenant_id")
    assert outputs["subscription_id"] == ref("data.azurerm_client_config", "client", "subscription_id")
    assert outputs["databricks_workspace_id"] == ref("azurerm_databricks_workspace", workspace, "id")
    assert local_value(doc, outputs["databricks_host"]) == "https://" + ref(
        "azurerm_databricks_workspace", workspace, "workspace_url"
    )
    assert local_value(doc, outputs["mlflow_tracking_uri"]) == (
        f"azureml://{env.location}.api.azureml.ms/mlflow/v1.0" + ref("azurerm_machine_learning_workspace", ml, "id")
    )
    assert outputs["ml_workspace_name"] == ref("azurerm_machine_learning_workspace", ml, "name")
    assert outputs["key_vault_uri"] == ref("azurerm_key_vault", ops_vault(doc, env), "vault_uri")
    assert outputs["data_account"] == ref("azurerm_storage_account", data, "name")
    assert outputs["automation_client_id"] == ref("azuread_application", automation_app(doc), "client_id")
    assert outputs["automation_application_object_id"] == ref("azuread_application", automation_app(doc), "object_id")
    for job in ("train", "deploy", "score", "monitor"):
        job_id = one(doc, "databricks_job", name=f"churn-{job}")[0]
        assert outputs[f"{job}_job_id"] == ref("databricks_job", job_id, "id")
    logs = one(doc, "azurerm_log_analytics_workspace")[0]
    assert outputs["log_analytics_workspace_id"] == ref("azurerm_log_analytics_workspace", logs, "id")
    group = one(doc, "azurerm_monitor_action_group")[0]
    assert outputs["alerts_action_group_id"] == ref("azurerm_monitor_action_group", group, "id")


@ALL
def test_no_password_or_token_anywhere(docs, key):
    doc = docs[key]
    kinds = set(doc["resource"])
    assert not {"azuread_application_password", "azuread_service_principal_password"} & kinds
    assert not any("password" in kind for kind in kinds)
    assert "password" not in one(doc, "azuread_application")[1]
    for provider in doc["provider"].values():
        for settings in provider:
            assert not {"token", "password", "client_secret", "access_key", "sas_token"} & set(settings)


@pytest.mark.parametrize("key", ["dev", "prod"])
def test_the_stack_creates_its_resource_group_by_default(docs, envs, key):
    names = envs[key].names
    assert CdkTesting.to_have_resource_with_properties(
        json.dumps(docs[key]), "azurerm_resource_group", {"name": names.resource_group, "location": envs[key].location}
    )
    assert "azurerm_resource_group" not in docs[key].get("data", {})


def test_an_existing_resource_group_is_looked_up_never_created(docs, envs):
    """A principal whose rights end at a pre-created group can deploy: nothing asks to create or import it."""
    doc, env = docs["custom"], envs["custom"]
    assert "azurerm_resource_group" not in doc["resource"]
    group_id, group = one(doc, "azurerm_resource_group", block="data")
    assert group["name"] == env.existing_resource_group == "rg-platform-churn-dev"
    # Resources land in the group's region, while the MLflow URI names the configured one: the plan checks both agree.
    (check,) = group["lifecycle"]["postcondition"]
    assert check["condition"] == '${self.location == "westeurope"}'
    assert "is in ${self.location}; expected westeurope" in check["error_message"]
    for kind in ("azurerm_key_vault", "azurerm_storage_account", "azurerm_databricks_workspace"):
        for attrs in of_type(doc, kind).values():
            assert attrs["resource_group_name"] == ref("data.azurerm_resource_group", group_id, "name")
            assert attrs["location"] == ref("data.azurerm_resource_group", group_id, "location")
    assert doc["output"]["resource_group"]["value"] == ref("data.azurerm_resource_group", group_id, "name")


@ALL
def test_every_azure_name_comes_from_the_environments_names(docs, envs, key):
    doc, names = docs[key], envs[key].names
    assert {a["name"] for a in of_type(doc, "azurerm_storage_account").values()} == {
        names.data_storage_account, names.ml_storage_account
    }
    assert {a["name"] for a in of_type(doc, "azurerm_key_vault").values()} == {names.key_vault, names.ml_key_vault}
    assert one(doc, "azurerm_container_registry")[1]["name"] == names.container_registry
    assert one(doc, "azurerm_log_analytics_workspace")[1]["name"] == names.log_analytics
    assert one(doc, "azurerm_application_insights")[1]["name"] == names.application_insights
    workspace = one(doc, "azurerm_databricks_workspace")[1]
    assert (workspace["name"], workspace["managed_resource_group_name"]) == (
        names.databricks_workspace, names.databricks_managed_resource_group
    )
    assert one(doc, "azuread_application")[1]["display_name"] == names.automation_app


def test_prod_and_dev_share_no_globally_unique_name(docs):
    def unique_names(doc):
        return {attrs["name"] for kind in ("azurerm_storage_account", "azurerm_key_vault", "azurerm_container_registry")
                for attrs in of_type(doc, kind).values()}

    assert not unique_names(docs["dev"]) & unique_names(docs["prod"])


# --- providers and state ------------------------------------------------------------------------


@ALL
def test_azurerm_provider_uses_entra_id_for_storage_and_the_configured_subscription(synthesized, docs, envs, key):
    text, env = synthesized[key][1], envs[key]
    expected = {"environment": "public", "storage_use_azuread": True}
    assert CdkTesting.to_have_provider_with_properties(text, "azurerm", expected)
    settings = docs[key]["provider"]["azurerm"][0]
    assert settings.get("subscription_id") == env.subscription_id  # None: ARM_SUBSCRIPTION_ID at plan time
    assert docs[key]["provider"]["azuread"] == [{"environment": "public"}]


@ALL
def test_destroy_leaves_nothing_behind_in_dev_and_keeps_the_safety_nets_in_prod(docs, envs, key):
    """`cdktn destroy churn-dev` then `cdktn deploy churn-dev` must work; prod keeps its protections."""
    disposable = envs[key].disposable
    assert disposable is (key != "prod")
    (settings,) = docs[key]["provider"]["azurerm"]
    assert settings["features"] == [{
        "key_vault": [{"purge_soft_delete_on_destroy": disposable, "recover_soft_deleted_key_vaults": True}],
        "resource_group": [{"prevent_deletion_if_contains_resources": not disposable}],
        "machine_learning": [{"purge_soft_deleted_workspace_on_destroy": disposable}],
        "log_analytics_workspace": [{"permanently_delete_on_destroy": disposable}],
        "databricks_workspace": [{"force_delete": disposable}],
    }]
    # Purge only where purge protection is off: a purge-protected vault refuses it.
    for vault in of_type(docs[key], "azurerm_key_vault").values():
        assert vault["purge_protection_enabled"] is not disposable


@ALL
def test_the_project_directory_is_deleted_with_the_folders_the_provider_created(docs, key):
    _, directory = one(docs[key], "databricks_directory", path=WORKSPACE_ROOT)
    assert directory["delete_recursive"] is True


# Where each azurerm resource type lives; a type the stack starts using must be added here (and, if its
# namespace is new, to RESOURCE_PROVIDERS and the runbook).
TYPE_NAMESPACE = {
    "azurerm_resource_group": "Microsoft.Resources",
    "azurerm_role_assignment": "Microsoft.Authorization",
    "azurerm_storage_account": "Microsoft.Storage",
    "azurerm_storage_container": "Microsoft.Storage",
    "azurerm_key_vault": "Microsoft.KeyVault",
    "azurerm_container_registry": "Microsoft.ContainerRegistry",
    "azurerm_log_analytics_workspace": "Microsoft.OperationalInsights",
    "azurerm_application_insights": "microsoft.insights",
    "azurerm_monitor_diagnostic_setting": "microsoft.insights",
    "azurerm_monitor_action_group": "microsoft.insights",
    "azurerm_monitor_scheduled_query_rules_alert_v2": "microsoft.insights",
    "azurerm_machine_learning_workspace": "Microsoft.MachineLearningServices",
    "azurerm_databricks_workspace": "Microsoft.Databricks",
}
ALWAYS_REGISTERED = {"Microsoft.Resources", "Microsoft.Authorization"}
# Namespaces no resource of the stack names, and the resource that needs them.
INDIRECT_NAMESPACES = {
    "Microsoft.AlertsManagement": "azurerm_application_insights",  # its generated Failure Anomalies rule
    "Microsoft.Compute": "azurerm_databricks_workspace",  # cluster VMs in the managed resource group
    "Microsoft.Network": "azurerm_databricks_workspace",  # the managed VNet
    "Microsoft.ManagedIdentity": "azurerm_databricks_workspace",  # a documented prerequisite
}


@pytest.mark.parametrize("key", ["dev", "prod"])
def test_azurerm_registers_exactly_the_resource_providers_the_stack_uses(docs, key):
    (settings,) = docs[key]["provider"]["azurerm"]
    assert settings["resource_provider_registrations"] == "none"  # no preset: exactly the list below
    registered = settings["resource_providers_to_register"]
    assert registered == list(RESOURCE_PROVIDERS) and len(set(registered)) == len(registered)
    kinds = [kind for kind in docs[key]["resource"] if kind.startswith("azurerm_")]
    unknown = [kind for kind in kinds if kind not in TYPE_NAMESPACE]
    assert unknown == [], "add these resource types to TYPE_NAMESPACE (and their namespace, if new, to the stack)"
    used = {TYPE_NAMESPACE[kind] for kind in kinds} - ALWAYS_REGISTERED
    assert set(registered) == used | set(INDIRECT_NAMESPACES)
    assert set(INDIRECT_NAMESPACES.values()) <= set(kinds)


def test_the_runbook_registers_the_same_providers_for_principals_without_subscription_rights():
    runbook = (PROJECT_ROOT / "docs" / "runbook.md").read_text()
    assert re.findall(r"^az provider register --namespace (\S+)$", runbook, re.MULTILINE) == list(RESOURCE_PROVIDERS)


def test_no_registration_when_an_administrator_registered_the_providers(docs, envs):
    assert envs["custom"].register_resource_providers is False
    (settings,) = docs["custom"]["provider"]["azurerm"]
    assert settings["resource_provider_registrations"] == "none"
    assert "resource_providers_to_register" not in settings


@ALL
def test_databricks_provider_targets_this_workspace_with_entra_id(docs, key):
    doc = docs[key]
    workspace = one(doc, "azurerm_databricks_workspace")[0]
    (settings,) = doc["provider"]["databricks"]
    assert settings["azure_workspace_resource_id"] == ref("azurerm_databricks_workspace", workspace, "id")
    host = local_value(doc, settings["host"])
    assert host == "https://" + ref("azurerm_databricks_workspace", workspace, "workspace_url")
    assert set(settings) == {"azure_workspace_resource_id", "host"}


@ALL
def test_terraform_version_is_the_pipelines_and_every_provider_source_is_fully_qualified(docs, key):
    settings = docs[key]["terraform"]
    # Both CI systems install Terraform with .ci/install-terraform, which pins the version in one line.
    installer = (PROJECT_ROOT / ".ci" / "install-terraform").read_text()
    (version,) = re.findall(r"^TERRAFORM_VERSION=(\S+)$", installer, re.M)
    assert version == TERRAFORM_VERSION
    assert settings["required_version"] == f"~> {version}"
    sources = {name: provider["source"] for name, provider in settings["required_providers"].items()}
    assert sources == {
        "azurerm": "hashicorp/azurerm", "azuread": "hashicorp/azuread", "databricks": "databricks/databricks"
    }


@pytest.mark.parametrize("key", ["dev", "prod"])
def test_state_is_local_by_default(docs, key):
    (backend,) = docs[key]["terraform"]["backend"].items()
    assert backend[0] == "local"
    assert Path(backend[1]["path"]).name == f"terraform.churn-{key}.tfstate"


def test_state_backend_is_azurerm_with_entra_id_when_configured(docs):
    backend = docs["custom"]["terraform"]["backend"]
    assert list(backend) == ["azurerm"]
    assert backend["azurerm"] == {
        "resource_group_name": "rg-tfstate", "storage_account_name": "sttfstate001", "container_name": "tfstate",
        "key": "churn-dev.tfstate", "use_azuread_auth": True, "environment": "public",
        "subscription_id": "00000000-0000-0000-0000-00000000abcd",
    }


# --- identity -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["dev", "prod"])
def test_automation_identity_is_owned_by_the_deploying_principal_by_default(docs, key):
    doc = docs[key]
    deployer = ref("data.azurerm_client_config", "client", "object_id")
    app_id, app = one(doc, "azuread_application")
    assert app["owners"] == [deployer]
    assert app["sign_in_audience"] == "AzureADMyOrg"
    assert "lifecycle" not in app
    _, principal = one(doc, "azuread_service_principal")
    assert principal["client_id"] == ref("azuread_application", app_id, "client_id")
    assert principal["owners"] == [deployer]


def test_configured_owners_do_not_follow_whoever_runs_apply(docs, envs):
    """The pipeline's principal taking over from the first deployer must not be an owner change, which
    Application.ReadWrite.OwnedBy cannot make."""
    doc = docs["custom"]
    owners = ["0a0a0a0a-0000-4000-8000-00000000000a", "0b0b0b0b-0000-4000-8000-00000000000b"]
    assert list(envs["custom"].application_owners) == owners  # stored in lower case
    _, app = one(doc, "azuread_application")
    _, principal = one(doc, "azuread_service_principal")
    assert app["owners"] == principal["owners"] == owners
    assert not any("client_config" in owner for owner in app["owners"])
    # Whoever runs apply must be one of them, or the plan stops with one clear line (not a Graph 403 mid-apply).
    (check,) = app["lifecycle"]["precondition"]
    assert check["condition"] == f"${{contains({json.dumps(owners)}, data.azurerm_client_config.client.object_id)}}"
    assert "is not in application_owners of environment 'dev'" in check["error_message"]


def test_an_owner_that_is_not_an_object_id_is_a_config_error(write_config):
    text = SHIPPED_CONFIG.read_text().replace(
        'purge_protection = false', 'purge_protection = false\napplication_owners = ["me@contoso.com"]', 1
    )
    with pytest.raises(ConfigError, match=r"environment 'dev' key 'application_owners\.0': 'me@contoso\.com' does not"):
        load_environment("dev", write_config(text))


@pytest.mark.parametrize("key", ["dev", "prod"])
def test_no_federated_credential_unless_configured(docs, key):
    assert "azuread_application_federated_identity_credential" not in docs[key]["resource"]


def test_one_federated_credential_per_configured_entry(docs, envs):
    doc = docs["custom"]
    credentials = of_type(doc, "azuread_application_federated_identity_credential")
    # Logical ids come from the entries' names, so reordering the config replaces nothing.
    names = sorted(lid.split("_federated_")[1].rsplit("_", 1)[0] for lid in credentials)
    assert names == ["azure_devops", "github_prod"]
    by_name = {attrs["display_name"]: attrs for attrs in credentials.values()}
    assert sorted(by_name) == ["churn-dev-azure-devops", "churn-dev-github-prod"]
    for wanted in envs["custom"].federation:
        credential = by_name[f"churn-dev-{wanted.name}"]
        assert (credential["issuer"], credential["subject"]) == (wanted.issuer, wanted.subject)
        assert credential["application_id"] == ref("azuread_application", automation_app(doc), "id")
        assert credential["audiences"] == ["api://AzureADTokenExchange"]


@ALL
def test_role_assignments_resolve_to_this_environments_resources(docs, envs, key):
    doc, env = docs[key], envs[key]
    principal = ref("azuread_service_principal", one(doc, "azuread_service_principal")[0], "object_id")
    expected_scope = {
        "resource_group": group_reference(doc, "id"),
        "ml_workspace": ref(
            "azurerm_machine_learning_workspace", one(doc, "azurerm_machine_learning_workspace")[0], "id"
        ),
        "ml_storage": ref(
            "azurerm_storage_account", one(doc, "azurerm_storage_account", name=env.names.ml_storage_account)[0], "id"
        ),
        "key_vault": ref("azurerm_key_vault", ops_vault(doc, env), "id"),
        "data_account": ref(
            "azurerm_storage_account", one(doc, "azurerm_storage_account", name=env.names.data_storage_account)[0], "id"
        ),
        "data_container": ref("azurerm_storage_container", one(doc, "azurerm_storage_container")[0], "id"),
    }
    assert set(expected_scope) == set(SCOPE_TYPES)
    granted = {(a["role_definition_name"], a["scope"]) for a in of_type(doc, "azurerm_role_assignment").values()
               if a["principal_id"] == principal}
    assert granted == {(wanted.role, expected_scope[wanted.scope]) for wanted in env.role_assignments}
    assert all(a["principal_type"] == "ServicePrincipal" for a in of_type(doc, "azurerm_role_assignment").values()
               if a["principal_id"] == principal)


@ALL
def test_the_deploying_principal_can_read_test_sets_and_model_files(docs, envs, key):
    """`release` runs as the deploying principal by default; both accounts refuse shared keys."""
    doc, env = docs[key], envs[key]
    deployer = ref("data.azurerm_client_config", "client", "object_id")
    data_container = ref("azurerm_storage_container", one(doc, "azurerm_storage_container")[0], "id")
    ml_storage = ref(
        "azurerm_storage_account", one(doc, "azurerm_storage_account", name=env.names.ml_storage_account)[0], "id"
    )
    granted = {(a["scope"], a["role_definition_name"]) for a in of_type(doc, "azurerm_role_assignment").values()
               if a["principal_id"] == deployer and a["role_definition_name"].startswith("Storage Blob Data")}
    # Model files are only read; in churndata the slot locks are leases on blobs, which is a write.
    assert granted == {(ml_storage, "Storage Blob Data Reader"), (data_container, "Storage Blob Data Contributor")}


def test_custom_environment_covers_every_symbolic_scope(envs):
    assert {wanted.scope for wanted in envs["custom"].role_assignments} == set(SCOPE_TYPES)


@ALL
def test_nobody_is_granted_owner(docs, key):
    roles = {a["role_definition_name"] for a in of_type(docs[key], "azurerm_role_assignment").values()}
    assert not roles & {"Owner", "User Access Administrator", "Role Based Access Control Administrator"}


def test_duplicate_role_assignment_is_a_config_error(write_config, source_root, tmp_path):
    text = SHIPPED_CONFIG.read_text().replace(
        '{ role = "Storage Blob Data Contributor", scope = "data_container" },',
        '{ role = "Storage Blob Data Contributor", scope = "data_container" },\n'
        '  { role = "Storage Blob Data Contributor", scope = "data_container" },',
    )
    env = load_environment("dev", write_config(text))
    with pytest.raises(ConfigError, match=r"environment 'dev' key 'role_assignments\[3\]': .*listed twice"):
        ChurnPlatformStack(cdk_app(tmp_path / "out"), env, source_root=source_root)


# --- Key Vault ----------------------------------------------------------------------------------


@ALL
def test_ops_key_vault_is_rbac_soft_deleted_firewalled_and_purge_protected_per_env(docs, envs, key):
    doc, env = docs[key], envs[key]
    vault = of_type(doc, "azurerm_key_vault")[ops_vault(doc, env)]
    assert vault["rbac_authorization_enabled"] is True
    assert vault["purge_protection_enabled"] is env.purge_protection
    assert vault["soft_delete_retention_days"] == 90
    # Only the configured addresses (e.g. self-hosted agents that run rotate-secret) pass the firewall.
    allowed = {"ip_rules": list(env.key_vault_allowed_ips)} if env.key_vault_allowed_ips else {}
    assert vault["network_acls"] == {"default_action": "Deny", "bypass": "AzureServices", **allowed}
    assert vault["tenant_id"] == ref("data.azurerm_client_config", "client", "tenant_id")
    assert "access_policy" not in vault


def test_purge_protection_is_off_in_dev_and_on_in_prod(envs):
    assert (envs["dev"].purge_protection, envs["prod"].purge_protection) == (False, True)


@ALL
def test_deployer_manages_secrets_and_azure_databricks_reads_them(docs, envs, key):
    doc = docs[key]
    vault = ref("azurerm_key_vault", ops_vault(doc, envs[key]), "id")
    databricks_app_id, databricks_app = one(doc, "azuread_service_principal", block="data")
    assert databricks_app == {**databricks_app, "client_id": AZURE_DATABRICKS_APP_ID}
    one(doc, "azurerm_role_assignment", scope=vault, role_definition_name="Key Vault Secrets Officer",
        principal_id=ref("data.azurerm_client_config", "client", "object_id"))
    one(doc, "azurerm_role_assignment", scope=vault, role_definition_name="Key Vault Secrets User",
        principal_id=ref("data.azuread_service_principal", databricks_app_id, "object_id"))
    # No object id is hard-coded: the only GUID in any principal_id would be a literal one.
    assert not any(GUID.search(a["principal_id"]) for a in of_type(doc, "azurerm_role_assignment").values())


@ALL
def test_vault_and_data_reads_are_logged(docs, envs, key):
    doc, env = docs[key], envs[key]
    workspace = ref("azurerm_log_analytics_workspace", one(doc, "azurerm_log_analytics_workspace")[0], "id")
    data = one(doc, "azurerm_storage_account", name=env.names.data_storage_account)[0]
    one(doc, "azurerm_monitor_diagnostic_setting", log_analytics_workspace_id=workspace,
        target_resource_id=ref("azurerm_key_vault", ops_vault(doc, env), "id"),
        enabled_log=[{"category_group": "audit"}])
    one(doc, "azurerm_monitor_diagnostic_setting", log_analytics_workspace_id=workspace,
        target_resource_id=ref("azurerm_storage_account", data, "id") + "/blobServices/default")


# --- storage and Azure ML ----------------------------------------------------------------------


@ALL
def test_storage_accounts_are_entra_id_only_and_hardened(docs, key):
    for account in of_type(docs[key], "azurerm_storage_account").values():
        assert account["shared_access_key_enabled"] is False
        assert account["min_tls_version"] == "TLS1_2"
        assert account["infrastructure_encryption_enabled"] is True
        assert account["allow_nested_items_to_be_public"] is False
        assert account["blob_properties"]["delete_retention_policy"]["days"] >= 7


@ALL
def test_churn_data_is_adls_gen2_with_the_churndata_container(docs, envs, key):
    doc, env = docs[key], envs[key]
    account_id, account = one(doc, "azurerm_storage_account", name=env.names.data_storage_account)
    assert account["is_hns_enabled"] is True
    _, container = one(doc, "azurerm_storage_container")
    assert container["name"] == "churndata" == env.names.data_container
    assert container["storage_account_id"] == ref("azurerm_storage_account", account_id, "id")
    assert container["container_access_type"] == "private"


@ALL
def test_ml_workspace_points_at_its_own_dependencies(docs, envs, key):
    doc, names = docs[key], envs[key].names
    _, workspace = one(doc, "azurerm_machine_learning_workspace", name=names.ml_workspace)
    storage = one(doc, "azurerm_storage_account", name=names.ml_storage_account)[0]
    vault = one(doc, "azurerm_key_vault", name=names.ml_key_vault)[0]
    registry_id, registry = one(doc, "azurerm_container_registry")
    insights_id, insights = one(doc, "azurerm_application_insights")
    logs = one(doc, "azurerm_log_analytics_workspace")[0]
    assert workspace["storage_account_id"] == ref("azurerm_storage_account", storage, "id")
    assert workspace["key_vault_id"] == ref("azurerm_key_vault", vault, "id")
    assert workspace["container_registry_id"] == ref("azurerm_container_registry", registry_id, "id")
    assert workspace["application_insights_id"] == ref("azurerm_application_insights", insights_id, "id")
    assert insights["workspace_id"] == ref("azurerm_log_analytics_workspace", logs, "id")
    assert workspace["identity"] == {"type": "SystemAssigned"}
    assert workspace["storage_account_access_type"] == "Identity"
    assert registry["admin_enabled"] is False


# --- Databricks --------------------------------------------------------------------------------


@ALL
def test_databricks_workspace_is_premium(synthesized, key):
    text = synthesized[key][1]
    assert CdkTesting.to_have_resource_with_properties(text, "azurerm_databricks_workspace", {"sku": "premium"})


@ALL
def test_a_plan_that_would_replace_the_workspace_is_refused(docs, key):
    """The databricks provider is configured from this workspace; replacing it would leave the provider without
    a host while the old workspace's objects still had to be deleted. prevent_destroy makes Terraform refuse any
    plan that destroys it, a replacement included, before anything changes."""
    (workspace,) = of_type(docs[key], "azurerm_databricks_workspace").values()
    assert workspace["lifecycle"] == {"prevent_destroy": True}
    guarded = [(kind, lid) for kind, items in docs[key]["resource"].items() for lid, attrs in items.items()
               if attrs.get("lifecycle", {}).get("prevent_destroy")]
    assert [kind for kind, _ in guarded] == ["azurerm_databricks_workspace"]


def test_only_a_teardown_lets_the_workspace_be_destroyed(source_root, tmp_path):
    doc = json.loads(CdkTesting.synth(ChurnPlatformStack(
        cdk_app(tmp_path / "out"), load_environment("dev"), source_root=source_root, teardown=True
    )))
    (workspace,) = of_type(doc, "azurerm_databricks_workspace").values()
    assert workspace["lifecycle"] == {"prevent_destroy": False}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("churn-prod", "config error: environment 'prod' key 'purge_protection': CHURN_TEARDOWN=churn-prod: the "
         "environment is purge-protected, which the kit never tears down; expected a disposable environment"),
        ("churn-stage", "config error: CHURN_TEARDOWN=churn-stage names no stack; expected one of churn-dev, "
         "churn-prod"),
    ],
)
def test_a_teardown_of_a_protected_or_unknown_stack_is_refused_in_one_line(value, expected):
    result = subprocess.run(
        [sys.executable, "main.py"], cwd=PROJECT_ROOT, env={"CHURN_TEARDOWN": value, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert (result.returncode, result.stderr.strip().splitlines()) == (2, [expected])


def test_a_teardown_names_exactly_one_disposable_stack():
    environments = load_all()
    assert main.teardown_stack(environments, "churn-dev") == "churn-dev"
    assert main.teardown_stack(environments, None) is None
    assert main.teardown_stack(environments, "") is None


@ALL
def test_secret_scope_is_backed_by_this_environments_vault(docs, envs, key):
    doc = docs[key]
    vault = ops_vault(doc, envs[key])
    _, scope = one(doc, "databricks_secret_scope", name=SECRET_SCOPE)
    assert scope["keyvault_metadata"] == {
        "resource_id": ref("azurerm_key_vault", vault, "id"), "dns_name": ref("azurerm_key_vault", vault, "vault_uri"),
    }
    databricks_app = one(doc, "azuread_service_principal", block="data")[0]
    access = one(doc, "azurerm_role_assignment", role_definition_name="Key Vault Secrets User",
                 principal_id=ref("data.azuread_service_principal", databricks_app, "object_id"))[0]
    assert f"azurerm_role_assignment.{access}" in scope["depends_on"]


@ALL
def test_automation_identity_is_a_workspace_principal_that_reads_the_scope(docs, key):
    doc = docs[key]
    principal_id, principal = one(doc, "databricks_service_principal")
    assert principal["application_id"] == ref("azuread_application", automation_app(doc), "client_id")
    scope_id = one(doc, "databricks_secret_scope")[0]
    one(doc, "databricks_secret_acl", permission="READ", scope=ref("databricks_secret_scope", scope_id, "name"),
        principal=ref("databricks_service_principal", principal_id, "application_id"))


@ALL
def test_jobs_run_the_notebooks_as_the_automation_identity(docs, envs, key):
    doc, env = docs[key], envs[key]
    runner = ref("databricks_service_principal", one(doc, "databricks_service_principal")[0], "application_id")
    node_id, node = one(doc, "databricks_node_type", block="data")
    workspace = f"azurerm_databricks_workspace.{one(doc, 'azurerm_databricks_workspace')[0]}"
    assert (node["local_disk"], node["depends_on"]) == (True, [workspace])
    expected = {
        "train": ({"env": env.name, "buildNumber": "", "buildSource": ""}, env.training.job_timeout_minutes),
        "deploy": ({"env": env.name, "buildNumber": "", "deployType": "Stage"}, env.training.job_timeout_minutes),
        "score": ({"env": env.name, "slot": "prod", "version": "", "scoringDate": "", "input": ""},
                  env.scoring.job_timeout_minutes),
        "monitor": ({"env": env.name, "slot": "prod", "window": "7d"}, env.monitoring.job_timeout_minutes),
    }
    assert sorted(job["name"] for job in of_type(doc, "databricks_job").values()) == sorted(
        f"churn-{name}" for name in expected
    )
    for name, (parameters, timeout_minutes) in expected.items():
        job_id, job = one(doc, "databricks_job", name=f"churn-{name}")
        assert job["run_as"] == {"service_principal_name": runner}
        assert job["timeout_seconds"] == timeout_minutes * 60
        assert (job["max_concurrent_runs"], job["queue"]) == (1, {"enabled": True})
        (cluster,) = job["job_cluster"]
        assert cluster["new_cluster"]["spark_version"] == env.databricks.spark_version
        if name != "score":
            assert cluster["new_cluster"]["node_type_id"] == ref("data.databricks_node_type", node_id, "id")
            assert cluster["new_cluster"]["num_workers"] == 0
        (task,) = job["task"]
        notebook = one(doc, "databricks_notebook", path=f"{WORKSPACE_ROOT}/notebooks/{name}_churn")[0]
        assert task["job_cluster_key"] == cluster["job_cluster_key"]
        assert task["notebook_task"]["notebook_path"] == ref("databricks_notebook", notebook, "path")
        assert task["notebook_task"]["base_parameters"] == parameters
        packages = [library["pypi"]["package"] for library in task["library"]]
        assert any(re.fullmatch(r"azureml-mlflow==[\d.]+", package) for package in packages)
        assert {package.split("==")[0] for package in packages} >= set(MODEL_LIBRARIES)
        one(doc, "databricks_permissions", job_id=ref("databricks_job", job_id, "id"),
            access_control=[{"service_principal_name": runner, "permission_level": "CAN_MANAGE_RUN"}])


@ALL
def test_the_monitor_may_start_training_as_the_identity_it_runs_as(docs, key):
    """churn-monitor starts churn-train when a threshold is crossed: its run-as identity needs CAN_MANAGE_RUN."""
    doc = docs[key]
    _, monitor = one(doc, "databricks_job", name="churn-monitor")
    train_id, _ = one(doc, "databricks_job", name="churn-train")
    _, access = one(doc, "databricks_permissions", job_id=ref("databricks_job", train_id, "id"))
    assert access["access_control"] == [
        {"service_principal_name": monitor["run_as"]["service_principal_name"], "permission_level": "CAN_MANAGE_RUN"}
    ]
    packages = {library["pypi"]["package"].split("==")[0] for library in monitor["task"][0]["library"]}
    assert {"databricks-sdk", "azure-mgmt-monitor"} <= packages


@pytest.mark.parametrize("key", ["dev", "prod"])
def test_scoring_runs_on_one_smallest_node_by_default(docs, key):
    node_id, _ = one(docs[key], "databricks_node_type", block="data")
    _, job = one(docs[key], "databricks_job", name="churn-score")
    (cluster,) = job["job_cluster"]
    assert cluster["new_cluster"]["num_workers"] == 0
    assert cluster["new_cluster"]["spark_conf"]["spark.databricks.cluster.profile"] == "singleNode"
    assert cluster["new_cluster"]["node_type_id"] == ref("data.databricks_node_type", node_id, "id")


def test_a_bigger_customer_base_is_a_config_change(docs, envs):
    assert (envs["custom"].scoring.workers, envs["custom"].scoring.node_type) == (4, "Standard_D8ds_v5")
    _, job = one(docs["custom"], "databricks_job", name="churn-score")
    (cluster,) = job["job_cluster"]
    assert cluster["job_cluster_key"] == job["task"][0]["job_cluster_key"] == "workers"
    new_cluster = cluster["new_cluster"]
    assert (new_cluster["num_workers"], new_cluster["node_type_id"]) == (4, "Standard_D8ds_v5")
    assert "spark_conf" not in new_cluster and "custom_tags" not in new_cluster  # multi-node, no single-node profile


@ALL
def test_scoring_and_monitoring_run_on_schedules_from_config_paused_in_dev(docs, envs, key):
    doc, env = docs[key], envs[key]
    paused = {"dev": "PAUSED", "prod": "UNPAUSED", "custom": "UNPAUSED"}[key]
    for name, settings in (("score", env.scoring), ("monitor", env.monitoring)):
        _, job = one(doc, "databricks_job", name=f"churn-{name}")
        assert job["schedule"] == {
            "quartz_cron_expression": settings.schedule, "timezone_id": settings.timezone, "pause_status": paused,
        }
    for name in ("train", "deploy"):  # started by the pipeline and the CLI, never on a schedule
        assert "schedule" not in one(doc, "databricks_job", name=f"churn-{name}")[1]
    if key == "custom":
        assert (env.scoring.schedule, env.scoring.timezone) == ("0 30 2 1 * ?", "Europe/Amsterdam")


@ALL
def test_every_job_tells_the_alert_receivers_when_it_fails(docs, envs, key):
    emails = list(envs[key].alerts.emails)
    assert bool(emails) is (key == "custom")
    for job in of_type(docs[key], "databricks_job").values():
        if emails:
            assert job["email_notifications"] == {"on_failure": emails}
        else:
            assert "email_notifications" not in job


@ALL
def test_the_runtime_is_pinned_to_the_line_of_the_local_spark_not_latest(docs, envs, key):
    assert "databricks_spark_version" not in docs[key].get("data", {})  # no lookup of "latest"
    jobs = of_type(docs[key], "databricks_job").values()
    runtimes = {cluster["new_cluster"]["spark_version"] for job in jobs for cluster in job["job_cluster"]}
    assert runtimes == {envs[key].databricks.spark_version}
    expected = "15.4.x-cpu-ml-scala2.12" if key != "custom" else "15.4.x-gpu-ml-scala2.12"
    assert runtimes == {expected}
    # 15.4 LTS runs Spark 3.5 and Python 3.11: the line of the locked pyspark and of the Pipfile's Python.
    lock = json.loads((PROJECT_ROOT / "Pipfile.lock").read_text())
    assert lock["default"]["pyspark"]["version"].startswith("==3.5.")
    assert lock["_meta"]["requires"]["python_version"] == "3.11"


@ALL
def test_every_job_installs_the_model_libraries_at_the_locked_versions(docs, key):
    """The runtime's own scikit-learn, numpy, pandas and scipy are older than the lock's: a model trained with
    them and loaded by the release machine with the lock's would be judged by another library."""
    locked = {name: spec["version"] for name, spec in json.loads((PROJECT_ROOT / "Pipfile.lock").read_text())[
        "default"].items()}
    for job in of_type(docs[key], "databricks_job").values():
        for task in job["task"]:
            packages = dict(library["pypi"]["package"].split("==") for library in task["library"])
            assert set(MODEL_LIBRARIES) <= set(packages), job["name"]
            assert all(f"=={version}" == locked[name] for name, version in packages.items()), job["name"]


def test_a_job_library_missing_from_the_lock_is_a_clear_error(source_root, tmp_path):
    root = tmp_path / "source"
    root.mkdir()
    for entry in ("config", "deploy", "notebooks"):
        (root / entry).symlink_to(source_root / entry)
    lock = json.loads((source_root / "Pipfile.lock").read_text())
    del lock["default"]["skops"]
    (root / "Pipfile.lock").write_text(json.dumps(lock))
    with pytest.raises(MissingSource, match=r"^skops is not in Pipfile\.lock's default packages"):
        ChurnPlatformStack(cdk_app(tmp_path / "out"), load_environment("dev"), source_root=root)


def test_job_timeout_follows_config(docs):
    timeouts = {job["name"]: job["timeout_seconds"] for job in of_type(docs["custom"], "databricks_job").values()}
    assert timeouts == {"churn-train": 45 * 60, "churn-deploy": 45 * 60, "churn-score": 240 * 60,
                        "churn-monitor": 30 * 60}


@ALL
def test_notebooks_are_uploaded_as_python_source(docs, source_root, key):
    doc = docs[key]
    for name in NOTEBOOKS:
        _, notebook = one(doc, "databricks_notebook", path=f"{WORKSPACE_ROOT}/notebooks/{name}")
        assert notebook["language"] == "PYTHON"
        assert base64.b64decode(notebook["content_base64"]) == (source_root / "notebooks" / f"{name}.py").read_bytes()


@ALL
def test_project_code_is_uploaded_at_its_repository_paths(docs, source_root, custom_config, key):
    files = of_type(docs[key], "databricks_workspace_file").values()
    uploaded = {attrs["path"]: attrs["content_base64"] for attrs in files}
    expected = project_files(source_root)
    assert {"config/__init__.py", "config/environments.toml", "config/schema.json", "deploy/platform/outputs.py"} <= {
        *expected
    }
    # Every package of deploy/, each concern's folder included, so a notebook imports exactly what the CLI does.
    packages = {
        path.parent.relative_to(source_root).as_posix() for path in (source_root / "deploy").rglob("__init__.py")
    }
    assert {"deploy", "deploy/core", "deploy/platform", "deploy/release", "deploy/release/targets",
            "deploy/identity", "deploy/training"} <= packages
    assert {f"{package}/__init__.py" for package in packages} <= {*expected}
    # The environments file is the one the stack was synthesized from, so notebooks know every environment in it.
    config_file = custom_config if key == "custom" else source_root / "config/environments.toml"
    for relative in expected:
        source = config_file if relative == "config/environments.toml" else source_root / relative
        assert base64.b64decode(uploaded.pop(f"{WORKSPACE_ROOT}/{relative}")) == source.read_bytes()
    assert list(uploaded) == [f"{WORKSPACE_ROOT}/outputs/{'churn-dev' if key != 'prod' else 'churn-prod'}.json"]
    directory_id, _ = one(docs[key], "databricks_directory", path=WORKSPACE_ROOT)
    runner = ref("databricks_service_principal", one(docs[key], "databricks_service_principal")[0], "application_id")
    one(docs[key], "databricks_permissions", directory_path=ref("databricks_directory", directory_id, "path"),
        access_control=[{"service_principal_name": runner, "permission_level": "CAN_READ"}])


def test_project_files_are_sorted_and_skip_caches(tmp_path):
    written = ("deploy/b.py", "deploy/a.py", "deploy/__pycache__/a.cpython-311.py", "config/x.py", "config/y.txt")
    for relative in written:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("")
    assert project_files(tmp_path) == [
        "config/environments.toml", "config/schema.json", "config/x.py", "deploy/a.py", "deploy/b.py"
    ]


@ALL
def test_workspace_outputs_file_holds_the_cli_outputs(docs, envs, key):
    doc, env = docs[key], envs[key]
    _, outputs_file = one(doc, "databricks_workspace_file", path=f"{WORKSPACE_ROOT}/outputs/{env.stack_name}.json")
    expression = outputs_file["content_base64"]
    assert expression.startswith(f'${{base64encode(jsonencode({{"{env.stack_name}" = {{')
    keys = re.findall(r'"(\w+)" = ', expression)
    assert sorted(keys) == sorted(OUTPUT_NAMES)
    # The values are the very expressions of the stack outputs, so the two copies cannot drift.
    for name, output in doc["output"].items():
        assert f'"{name}" = {_unwrap(output["value"])}' in expression


def _unwrap(value: str) -> str:
    plain = re.fullmatch(r"\$\{(.*)\}", value)
    return plain.group(1) if plain else json.dumps(value)


def test_missing_notebook_is_a_clear_error(tmp_path):
    (tmp_path / "Pipfile.lock").write_text("{}")
    with pytest.raises(MissingSource, match=r"notebooks/train_churn\.py not found"):
        ChurnPlatformStack(cdk_app(tmp_path / "out"), load_environment("dev"), source_root=tmp_path)


# --- alerts ------------------------------------------------------------------------------------

SIGNAL_COLUMNS = {
    "p95-latency": ("AmlOnlineEndpointTrafficLog", "percentile(TotalDurationMs, 95)"),
    "5xx-rate": ("AmlOnlineEndpointTrafficLog", "countif(toint(ResponseCode) >= 500)"),
    "cpu": ("AzureMetrics", '"CpuUtilizationPercentage"'),
    "memory": ("AzureMetrics", '"CpuMemoryUtilizationPercentage"'),
}


@ALL
def test_the_action_group_reaches_the_configured_receivers(docs, envs, key):
    doc, env = docs[key], envs[key]
    _, group = one(doc, "azurerm_monitor_action_group")
    assert (group["name"], group["short_name"]) == (f"ag-{env.prefix}-churn", env.prefix)
    assert group["resource_group_name"] == group_reference(doc, "name")
    receivers = [(r["email_address"], r["use_common_alert_schema"]) for r in group.get("email_receiver", [])]
    assert receivers == [(email, True) for email in env.alerts.emails]


@ALL
def test_each_serving_slot_has_latency_error_cpu_and_memory_alerts_on_the_log_workspace(docs, envs, key):
    """The endpoints are created by `release`, so the rules query the Log Analytics workspace (which exists at
    apply time) for this environment's endpoint names; release's diagnostic settings fill the tables."""
    doc, env = docs[key], envs[key]
    alerts = env.alerts
    logs = ref("azurerm_log_analytics_workspace", one(doc, "azurerm_log_analytics_workspace")[0], "id")
    group = ref("azurerm_monitor_action_group", one(doc, "azurerm_monitor_action_group")[0], "id")
    thresholds = {"p95-latency": alerts.p95_latency_ms, "5xx-rate": alerts.error_rate_percent,
                  "cpu": alerts.cpu_percent, "memory": alerts.memory_percent}
    rules = {rule["name"]: rule for rule in of_type(doc, "azurerm_monitor_scheduled_query_rules_alert_v2").values()}
    assert len(rules) == 8
    for slot in ("stage", "prod"):
        endpoint, other = env.endpoint_name(slot), env.endpoint_name("prod" if slot == "stage" else "stage")
        for signal, (table, measure) in SIGNAL_COLUMNS.items():
            rule = rules[f"{endpoint}-{signal}"]
            assert rule["scopes"] == [logs]
            assert rule["action"] == {"action_groups": [group]}
            assert (rule["evaluation_frequency"], rule["window_duration"]) == (
                f"PT{alerts.frequency_minutes}M", f"PT{alerts.window_minutes}M")
            assert rule["location"] == group_reference(doc, "location")
            assert rule["skip_query_validation"] is True  # the tables appear with the first logged request
            (criteria,) = rule["criteria"]
            assert (criteria["operator"], criteria["threshold"]) == ("GreaterThan", thresholds[signal])
            assert (criteria["metric_measure_column"], criteria["time_aggregation_method"]) == ("value", "Maximum")
            query = criteria["query"]
            assert query.startswith(table) and measure in query and "value =" in query
            assert endpoint in query and other not in query
    if key == "custom":
        assert thresholds == {"p95-latency": 400, "5xx-rate": 2.5, "cpu": 70, "memory": 75}


def test_the_error_rate_needs_enough_requests_to_mean_something(docs, envs):
    endpoint = envs["dev"].endpoint_name("prod")
    (rule,) = [r for r in of_type(docs["dev"], "azurerm_monitor_scheduled_query_rules_alert_v2").values()
               if r["name"] == f"{endpoint}-5xx-rate"]
    assert f"| where total >= {MIN_REQUESTS_FOR_ERROR_RATE}" in rule["criteria"][0]["query"]


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('[environments.dev.alerts]\nwindow_minutes = 5\nfrequency_minutes = 10\n',
         "key 'alerts.frequency_minutes': 10 is longer than window_minutes \\(5\\)"),
        ('[environments.dev.alerts]\nwindow_minutes = 7\n', "key 'alerts.window_minutes': 7 is not one of"),
        ('[environments.dev.alerts]\nemails = ["not-an-address"]\n', "key 'alerts.emails.0': 'not-an-address'"),
        ('[environments.dev.scoring]\nschedule = "0 0 5 * * MON"\n',
         "key 'scoring.schedule': '0 0 5 \\* \\* MON' is not a Quartz cron Databricks takes"),
        ('[environments.dev.monitoring]\nschedule = "daily"\n', "key 'monitoring.schedule': 'daily' does not match"),
        ('[environments.dev.scoring]\nworkers = 2.5\n', "key 'scoring.workers': 2.5 is not of type 'integer'"),
    ],
)
def test_bad_job_and_alert_settings_are_one_line_config_errors(write_config, table, problem):
    text = re.sub(r"\[environments\.dev\.(scoring|monitoring)\]\npaused = true", "", SHIPPED_CONFIG.read_text())
    with pytest.raises(ConfigError, match=f"environment 'dev' {problem}"):
        load_environment("dev", write_config(text + "\n" + table))


# --- the app and the summary --------------------------------------------------------------------


def test_app_reports_config_errors_in_one_line_with_exit_2(write_config):
    bad = write_config(SHIPPED_CONFIG.read_text().replace('prefix = "chrnprod"', 'prefix = "chrndev"'))
    result = subprocess.run(
        [sys.executable, "main.py"], cwd=PROJECT_ROOT, env={"CHURN_CONFIG": str(bad), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "config error: environment 'prod' key 'prefix': 'chrndev' is already used by environment 'dev'; "
        "expected a prefix unique to this environment (globally unique names derive from it)"
    ]
    assert "Traceback" not in result.stderr


def test_one_stack_per_azure_environment():
    assert sorted(env.stack_name for env in load_all().values() if not env.is_local) == ["churn-dev", "churn-prod"]


def test_summary_counts_resources_and_lists_outputs(docs, tmp_path, capsys):
    for key in ("dev", "prod"):
        stack_dir = tmp_path / "stacks" / f"churn-{key}"
        stack_dir.mkdir(parents=True)
        (stack_dir / "cdk.tf.json").write_text(json.dumps(docs[key]))
    assert summary.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "churn-dev would create:" in printed and "churn-prod would create:" in printed
    assert re.search(r"^\s+4  databricks_job$", printed, re.MULTILINE)
    total = sum(len(items) for items in docs["dev"]["resource"].values())
    assert f"{total:3d}  resources in total; state backend: local" in printed
    assert "outputs: " + ", ".join(sorted(OUTPUT_NAMES)) in printed


def test_summary_without_stacks_exits_2(tmp_path, capsys):
    assert summary.main([str(tmp_path)]) == 2
    assert "no stacks/*/cdk.tf.json in" in capsys.readouterr().err

