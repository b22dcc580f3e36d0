"""Azure Machine Learning: the workspace that tracks runs (MLflow), registers models and serves them.

Its dependencies are its own: a storage account, a Key Vault, a container registry, and Application
Insights on a Log Analytics workspace. The workspace authenticates to them with its system-assigned
identity, so its storage needs no shared keys either.
"""

from __future__ import annotations

from cdktn import TerraformLocal
from cdktn_provider_azurerm.application_insights import ApplicationInsights
from cdktn_provider_azurerm.container_registry import ContainerRegistry
from cdktn_provider_azurerm.log_analytics_workspace import LogAnalyticsWorkspace
from cdktn_provider_azurerm.machine_learning_workspace import MachineLearningWorkspace, MachineLearningWorkspaceIdentity
from constructs import Construct

from config import EnvConfig
from stacks.resource_group import ResourceGroupLike
from stacks.secrets import hardened_key_vault
from stacks.storage import hardened_storage_account

LOG_RETENTION_DAYS = 30
# Azure ML's regional API domain per cloud (config CloudEndpoints names).
AZUREML_API_DOMAIN = {
    "AzureCloud": "api.azureml.ms",
    "AzureUSGovernment": "api.ml.azure.us",
    "AzureChinaCloud": "api.ml.azure.cn",
}


class MachineLearning(Construct):
    def __init__(
        self, scope: Construct, id_: str, *, env: EnvConfig, resource_group: ResourceGroupLike, tenant_id: str
    ):
        super().__init__(scope, id_)
        names = env.names
        place = {"resource_group_name": resource_group.name, "location": resource_group.location, "tags": env.tags}
        self.storage = hardened_storage_account(
            self, "storage", name=names.ml_storage_account, env=env, resource_group=resource_group, hierarchical=False
        )
        # Access-policy mode: Azure ML grants its own identity access when it creates the workspace.
        self.key_vault = hardened_key_vault(
            self, "key_vault", name=names.ml_key_vault, env=env, resource_group=resource_group, tenant_id=tenant_id,
            rbac=False,
        )
        self.registry = ContainerRegistry(
            self, "registry", name=names.container_registry, sku="Standard", admin_enabled=False,
            anonymous_pull_enabled=False, **place,
        )
        self.log_analytics = LogAnalyticsWorkspace(
            self, "log_analytics", name=names.log_analytics, sku="PerGB2018", retention_in_days=LOG_RETENTION_DAYS,
            **place,
        )
        self.application_insights = ApplicationInsights(
            self, "application_insights", name=names.application_insights, application_type="web",
            workspace_id=self.log_analytics.id, **place,
        )
        self.workspace = MachineLearningWorkspace(
            self,
            "workspace",
            name=names.ml_workspace,
            storage_account_id=self.storage.id,
            key_vault_id=self.key_vault.id,
            container_registry_id=self.registry.id,
            application_insights_id=self.application_insights.id,
            identity=MachineLearningWorkspaceIdentity(type="SystemAssigned"),
            storage_account_access_type="Identity",  # the storage has shared keys off
            v1_legacy_mode_enabled=False,
            # High-business-impact mode needs a private-network store; the starter kit trains on a public table.
            high_business_impact=False,
            **place,
        )

        # A local, so the copy of the outputs inside Databricks can reference it from a Terraform function.
        self.mlflow_tracking_uri = TerraformLocal(
            self, "mlflow_tracking_uri",
            f"azureml://{env.location}.{AZUREML_API_DOMAIN[env.cloud.name]}/mlflow/v1.0{self.workspace.id}",
        ).as_string
