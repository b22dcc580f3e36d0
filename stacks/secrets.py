"""The environment's Key Vault: it holds the automation identity's client secret, written by `rotate-secret`.

The vault is in RBAC mode, so access is role assignments rather than inline access policies (which
Terraform would fight with the policy Databricks adds when it creates the scope). The deploying
principal manages secrets; the AzureDatabricks first-party application only reads them, which is
what a Key Vault-backed secret scope needs.
"""

from __future__ import annotations

from cdktn_provider_azuread.data_azuread_service_principal import DataAzureadServicePrincipal
from cdktn_provider_azurerm.data_azurerm_client_config import DataAzurermClientConfig
from cdktn_provider_azurerm.key_vault import KeyVault, KeyVaultNetworkAcls
from cdktn_provider_azurerm.role_assignment import RoleAssignment
from constructs import Construct

from config import AZURE_DATABRICKS_APP_ID, EnvConfig
from stacks.monitoring import send_logs
from stacks.resource_group import ResourceGroupLike

SOFT_DELETE_DAYS = 90


def hardened_key_vault(
    scope: Construct, id_: str, *, name: str, env: EnvConfig, resource_group: ResourceGroupLike, tenant_id: str,
    rbac: bool,
) -> KeyVault:
    """A standard vault with soft delete, the environment's purge protection and a deny-by-default firewall.

    Trusted Azure services (Databricks reading a secret scope, Azure ML reading its workspace vault)
    pass the firewall; anyone else needs an IP rule or a private endpoint.
    """
    return KeyVault(
        scope,
        id_,
        name=name,
        resource_group_name=resource_group.name,
        location=resource_group.location,
        tenant_id=tenant_id,
        sku_name="standard",
        rbac_authorization_enabled=rbac,
        soft_delete_retention_days=SOFT_DELETE_DAYS,
        purge_protection_enabled=env.purge_protection,
        network_acls=KeyVaultNetworkAcls(
            default_action="Deny", bypass="AzureServices", ip_rules=list(env.key_vault_allowed_ips) or None
        ),
        tags=env.tags,
    )


class SecretStore(Construct):
    """The ops Key Vault and who may touch its secrets."""

    def __init__(
        self, scope: Construct, id_: str, *, env: EnvConfig, resource_group: ResourceGroupLike,
        client: DataAzurermClientConfig, log_analytics_id: str,
    ):
        super().__init__(scope, id_)
        self.vault = hardened_key_vault(
            self, "vault", name=env.names.key_vault, env=env, resource_group=resource_group,
            tenant_id=client.tenant_id, rbac=True,
        )
        # Who read or wrote the automation identity's secret.
        send_logs(
            self, "audit_logs", name=f"{env.names.key_vault}-audit", target_resource_id=self.vault.id,
            workspace_id=log_analytics_id, category_group="audit",
        )
        # The deploying principal (or whoever runs rotate-secret with it) writes new secret versions.
        self.deployer_access = RoleAssignment(
            self, "deployer_secrets_officer", scope=self.vault.id, principal_id=client.object_id,
            role_definition_name="Key Vault Secrets Officer",
        )
        self.azure_databricks = DataAzureadServicePrincipal(self, "azure_databricks", client_id=AZURE_DATABRICKS_APP_ID)
        self.databricks_access = RoleAssignment(
            self, "databricks_secrets_user", scope=self.vault.id, principal_id=self.azure_databricks.object_id,
            principal_type="ServicePrincipal", role_definition_name="Key Vault Secrets User",
        )
