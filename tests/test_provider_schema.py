"""Every synthesized resource, data source and provider block against the providers' own schemas.

Terraform would refuse an unknown argument, a missing required one or a reference to an attribute that
does not exist at `terraform validate`, which cannot run here (no provider downloads). The prebuilt
provider packages ship the same schema in their jsii assemblies (tests/provider_schema.py reads them), so
this checks dev, prod and the every-option environment against that, nested blocks included. The second
half feeds the checker bad blocks, so a check that silently passes everything would fail here.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT_ROOT
from tests.provider_schema import Assembly, Schemas, snake

SITE_PACKAGES = next((PROJECT_ROOT / ".venv" / "lib").glob("python3*/site-packages"), None)
PACKAGES = ("cdktn_provider_azurerm", "cdktn_provider_azuread", "cdktn_provider_databricks")


@pytest.fixture(scope="session")
def schemas() -> Schemas:
    """Each assembly parsed once per session (azurerm's is 84 MB of JSON, a few seconds)."""
    if SITE_PACKAGES is None or not all((SITE_PACKAGES / package / "_jsii").is_dir() for package in PACKAGES):
        pytest.skip("the prebuilt provider packages are not installed in .venv (make install)")
    return Schemas(Assembly.from_package(SITE_PACKAGES / package) for package in PACKAGES)


# --- the synthesized stacks ------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["dev", "prod", "custom"])
def test_every_block_and_reference_matches_the_provider_schemas(schemas, docs, key):
    doc = docs[key]
    assert schemas.check_document(doc) == []
    # Everything was looked at: every resource and data source type is known to some provider.
    kinds = [("resource", kind) for kind in doc["resource"]] + [("data", kind) for kind in doc.get("data", {})]
    assert all(schemas.block(*kind) is not None for kind in kinds)
    assert len(kinds) >= 20


def test_the_schemas_know_what_the_stack_relies_on(schemas):
    """Spot checks against the provider documentation, so a misread assembly cannot pass silently."""
    vault = schemas.block("resource", "azurerm_key_vault")
    assert {"rbac_authorization_enabled", "tenant_id", "sku_name"} <= vault.required  # azurerm 5: required
    assert "vault_uri" in vault.attributes and "vault_uri" not in vault.arguments  # computed only
    assert vault.arguments["network_acls"].block.required == {"bypass", "default_action"}
    job = schemas.block("resource", "databricks_job")
    assert job.arguments["task"].block.required == {"task_key"}
    assert "notebook_path" in job.arguments["task"].block.arguments["notebook_task"].block.required
    provider = schemas.block("provider", "azurerm")
    assert {"resource_providers_to_register", "resource_provider_registrations", "features"} <= set(provider.arguments)
    assert "skip_provider_registration" not in provider.arguments  # removed in azurerm 5.0
    features = provider.arguments["features"].block
    assert "prevent_deletion_if_contains_resources" in features.arguments["resource_group"].block.arguments
    assert "delete_recursive" in schemas.block("resource", "databricks_directory").arguments


def test_renamed_properties_map_to_their_terraform_names(schemas):
    """jsii renames some properties (`system` clashes with a reserved word, digits split oddly); the registry
    link in each property's docs gives the Terraform name, which a camelCase conversion would get wrong."""
    ticket = schemas.block("resource", "azurerm_pim_active_role_assignment").arguments["ticket"].block
    assert "system" in ticket.arguments and "system_attribute" not in ticket.arguments
    rule = schemas.block("resource", "azurerm_netapp_volume").arguments["export_policy_rule"].block
    assert "kerberos_5i_read_only_enabled" in rule.arguments
    assert snake("kerberos5IReadOnlyEnabled") != "kerberos_5i_read_only_enabled"
    # A computed attribute has no link: its name comes from the camelCase getter, capital runs split correctly.
    alert = schemas.block("resource", "azurerm_monitor_scheduled_query_rules_alert_v2")
    assert "is_a_legacy_log_analytics_rule" in alert.attributes


# --- the checker fails on bad blocks ------------------------------------------------------------------

VAULT = {
    "name": "kv-x", "location": "westeurope", "resource_group_name": "rg", "tenant_id": "t", "sku_name": "standard",
    "rbac_authorization_enabled": True, "network_acls": {"bypass": "AzureServices", "default_action": "Deny"},
}
JOB = {"name": "churn-train", "task": [{"task_key": "train", "notebook_task": {"notebook_path": "/x"}}]}


def document(**blocks: Any) -> dict[str, Any]:
    base = {
        "resource": {"azurerm_key_vault": {"kv": copy.deepcopy(VAULT)},
                     "databricks_job": {"train": copy.deepcopy(JOB)}},
        "data": {"azurerm_client_config": {"client": {}}},
    }
    for path, value in blocks.items():
        *parents, last = path.split("__")
        node = base
        for part in parents:
            node = node.setdefault(part, {}) if not part.isdigit() else node[int(part)]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return base


def test_a_good_document_has_no_problem(schemas):
    assert schemas.check_document(document(output={"uri": {"value": "${azurerm_key_vault.kv.vault_uri}"}})) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"resource__azurerm_key_vault__kv__enable_rbac_authorization": True},
         "resource.azurerm_key_vault.kv: unknown argument enable_rbac_authorization"),
        ({"resource__azurerm_key_vault__kv__rbac_authorization_enabled": None},
         "resource.azurerm_key_vault.kv: missing required argument rbac_authorization_enabled"),
        ({"resource__azurerm_key_vault__kv__network_acls__default_action": None},
         "resource.azurerm_key_vault.kv.network_acls: missing required argument default_action"),
        ({"resource__databricks_job__train__task__0__notebook_task__notebook": "/x"},
         "resource.databricks_job.train.task[0].notebook_task: unknown argument notebook"),
        ({"resource__azurerm_keyvault": {"kv": {}}}, "resource.azurerm_keyvault.kv: no provider defines resource type"),
        ({"output": {"uri": {"value": "${azurerm_key_vault.kv.vault_url}"}}},
         "azurerm_key_vault.kv.vault_url: azurerm_key_vault has no attribute vault_url"),
        ({"output": {"tenant": {"value": "${data.azurerm_client_config.client.tenant}"}}},
         "data.azurerm_client_config.client.tenant: azurerm_client_config has no attribute tenant"),
        ({"provider": {"azurerm": [{"features": [{}], "skip_provider_registration": True}]}},
         "provider.azurerm[0]: unknown argument skip_provider_registration"),
        ({"provider": {"azurerm": [{"features": [{"resource_group": [{"prevent_deletion": False}]}]}]}},
         "provider.azurerm[0].features[0].resource_group[0]: unknown argument prevent_deletion"),
        ({"data__azurerm_resource_group": {"group": {"name": "rg", "lifecycle": {"postcondition": [
            {"condition": "${self.region == \"westeurope\"}", "error_message": "x"}]}}}},
         "self.region: azurerm_resource_group has no attribute region"),
    ],
)
def test_the_checker_reports_what_terraform_would_refuse(schemas, change, problem):
    problems = schemas.check_document(document(**change))
    assert len(problems) == 1 and problem in problems[0], problems


def test_meta_arguments_and_references_to_other_blocks_are_accepted(schemas):
    doc = document(**{
        "resource__databricks_job__train__depends_on": ["azurerm_key_vault.kv"],
        "resource__databricks_job__train__lifecycle": {"prevent_destroy": True},
        "resource__databricks_job__train__tags": {"anything": "goes in a map"},
        "locals": {"host": "https://${azurerm_key_vault.kv.network_acls[0].bypass}"},
    })
    assert schemas.check_document(doc) == []


def test_a_compressed_assembly_is_read_through_its_redirect(tmp_path: Path):
    """jsii may ship `.jsii` as a redirect to a gzipped copy; both forms must read alike."""
    assembly = {"types": {
        "p.thing.Thing": {"base": "cdktn.TerraformResource", "kind": "class", "fqn": "p.thing.Thing",
                          "docs": {"summary": "Represents a {@link https://registry/docs/resources/thing p_thing}."},
                          "initializer": {"parameters": [{"name": "config", "type": {"fqn": "p.thing.ThingConfig"}}]},
                          "properties": [{"name": "size", "type": {"primitive": "number"}},
                                         {"name": "sizeInput", "type": {"primitive": "number"}, "optional": True}]},
        "p.thing.ThingConfig": {"datatype": True, "kind": "interface", "fqn": "p.thing.ThingConfig",
                                "interfaces": ["cdktn.TerraformMetaArguments"],
                                "properties": [{"name": "size", "type": {"primitive": "number"},
                                                "docs": {"summary": "{@link https://r/thing#size Thing#size}"}}]},
    }}
    package = tmp_path / "cdktn_provider_p"
    (package / "_jsii").mkdir(parents=True)
    with tarfile.open(package / "_jsii" / "provider-p@1.0.0.jsii.tgz", "w:gz") as tar:
        for name, data in (
            ("package/.jsii", json.dumps({"schema": "jsii/file-redirect", "compression": "gzip",
                                          "filename": ".jsii.gz"}).encode()),
            ("package/.jsii.gz", gzip.compress(json.dumps(assembly).encode())),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    thing = Assembly.from_package(package).block("resource", "p_thing")
    assert (thing.required, thing.attributes) == ({"size"}, {"size"})
