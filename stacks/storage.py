"""Storage accounts: the ADLS Gen2 churn data account, and the hardened defaults every account shares.

Every account is Entra ID-only (no shared keys, OAuth by default in the portal), TLS 1.2, double
encryption at rest, no anonymous blob access and soft delete for blobs and containers. Network
access stays public: Databricks classic compute and the azureml-mlflow artifact upload reach the
accounts from addresses a starter kit cannot pin without VNet injection or private endpoints
(see .checkov.yaml for the matching skips).
"""

from __future__ import annotations

from cdktn_provider_azurerm.storage_account import (
    StorageAccount,
    StorageAccountBlobProperties,
    StorageAccountBlobPropertiesContainerDeleteRetentionPolicy,
    StorageAccountBlobPropertiesDeleteRetentionPolicy,
    StorageAccountSasPolicy,
)
from cdktn_provider_azurerm.storage_container import StorageContainer
from constructs import Construct

from config import EnvConfig
from stacks.monitoring import send_logs
from stacks.resource_group import ResourceGroupLike

SOFT_DELETE_DAYS = 7


def hardened_storage_account(
    scope: Construct, id_: str, *, name: str, env: EnvConfig, resource_group: ResourceGroupLike, hierarchical: bool
) -> StorageAccount:
    """A StorageV2 account with the defaults above; `hierarchical` turns on ADLS Gen2 (HNS)."""
    return StorageAccount(
        scope,
        id_,
        name=name,
        resource_group_name=resource_group.name,
        location=resource_group.location,
        account_kind="StorageV2",
        account_tier="Standard",
        account_replication_type="GRS",  # a regional outage loses no audit trail or model artifact
        is_hns_enabled=hierarchical,
        min_tls_version="TLS1_2",
        https_traffic_only_enabled=True,
        shared_access_key_enabled=False,
        default_to_oauth_authentication=True,
        infrastructure_encryption_enabled=True,
        allow_nested_items_to_be_public=False,
        cross_tenant_replication_enabled=False,
        local_user_enabled=False,
        # Shared keys are off, so no account SAS can be signed; the policy still bounds user-delegation SAS.
        sas_policy=StorageAccountSasPolicy(expiration_period="01.00:00:00", expiration_action="Block"),
        blob_properties=StorageAccountBlobProperties(
            delete_retention_policy=StorageAccountBlobPropertiesDeleteRetentionPolicy(days=SOFT_DELETE_DAYS),
            container_delete_retention_policy=StorageAccountBlobPropertiesContainerDeleteRetentionPolicy(
                days=SOFT_DELETE_DAYS
            ),
        ),
        tags=env.tags,
    )


class ChurnDataStorage(Construct):
    """The ADLS Gen2 account and its `churndata` container, where each build leaves its audit trail."""

    def __init__(
        self, scope: Construct, id_: str, *, env: EnvConfig, resource_group: ResourceGroupLike, log_analytics_id: str
    ):
        super().__init__(scope, id_)
        self.account = hardened_storage_account(
            self, "account", name=env.names.data_storage_account, env=env, resource_group=resource_group,
            hierarchical=True,
        )
        self.container = StorageContainer(
            self, "container", name=env.names.data_container, storage_account_id=self.account.id,
            container_access_type="private",
        )
        # Every read, write and delete of churn data, by whom: the audit trail beside runs/<build>/.
        send_logs(
            self, "blob_logs", name=f"{env.names.data_storage_account}-blob-logs",
            target_resource_id=f"{self.account.id}/blobServices/default", workspace_id=log_analytics_id,
            category_group="allLogs",
        )
