"""One environment's stack, `churn-<env>`: providers, state backend, resource group, the constructs of
every area, and the outputs the deploy module reads (deploy/outputs.py names them).
"""

from __future__ import annotations

from pathlib import Path

from cdktn import AzurermBackend, LocalBackend, TerraformOutput, TerraformStack
from cdktn_provider_azuread.provider import AzureadProvider
from cdktn_provider_azurerm.data_azurerm_client_config import DataAzurermClientConfig
from cdktn_provider_azurerm.provider import (
    AzurermProvider,
    AzurermProviderFeatures,
    AzurermProviderFeaturesDatabricksWorkspace,
    AzurermProviderFeaturesKeyVault,
    AzurermProviderFeaturesLogAnalyticsWorkspace,
    AzurermProviderFeaturesMachineLearning,
    AzurermProviderFeaturesResourceGroup,
)
from cdktn_provider_azurerm.role_assignment import RoleAssignment
from constructs import Construct

from config import PROJECT_ROOT, EnvConfig
from stacks.databricks import DatabricksPlatform
from stacks.identity import AutomationIdentity
from stacks.ml_workspace import MachineLearning
from stacks.monitoring import ServingAlerts
from stacks.resource_group import environment_resource_group
from stacks.secrets import SecretStore
from stacks.storage import ChurnDataStorage

# The resource providers whose resources the stack (and what it creates) lives in. azurerm 5 registers
# none by default, and an apply on a fresh subscription then stops with MissingSubscriptionRegistration.
# Microsoft.Resources and Microsoft.Authorization are registered in every subscription.
RESOURCE_PROVIDERS = (
    "Microsoft.Storage",  # the data and ML storage accounts
    "Microsoft.KeyVault",  # the ops and ML vaults
    "Microsoft.ContainerRegistry",  # the ML workspace's registry
    "Microsoft.OperationalInsights",  # the Log Analytics workspace
    "microsoft.insights",  # Application Insights, diagnostic settings (ARM spells this namespace in lower case)
    "Microsoft.AlertsManagement",  # the Failure Anomalies smart detector rule Application Insights creates
    "Microsoft.MachineLearningServices",  # the ML workspace and the online endpoints `release` creates
    "Microsoft.Databricks",  # the workspace
    # In the workspace's managed resource group: the cluster VMs, their VNet, and its managed identity
    # (Databricks documents ManagedIdentity as a prerequisite of creating a workspace).
    "Microsoft.Compute",
    "Microsoft.Network",
    "Microsoft.ManagedIdentity",
)

# The Terraform both CI systems install (.ci/install-terraform). A newer patch release of the same
# line is accepted on a laptop; an older one, or another minor line, stops `terraform init`.
TERRAFORM_VERSION = "1.14.9"


class ChurnPlatformStack(TerraformStack):
    def __init__(
        self, scope: Construct, env: EnvConfig, *, source_root: Path = PROJECT_ROOT, teardown: bool = False,
        config_file: Path | None = None,
    ):
        """`source_root`: the repository whose notebooks and project code are uploaded to Databricks.
        `config_file`: the environments file `env` comes from, uploaded with them (default: the repository's).
        `teardown`: synthesized for `cdktn destroy` of this stack (main.py, CHURN_TEARDOWN)."""
        super().__init__(scope, env.stack_name)
        self._configure_terraform(env)
        client = DataAzurermClientConfig(self, "client")  # the deploying principal
        resource_group = environment_resource_group(self, env)
        identity = AutomationIdentity(self, "automation", env=env, deployer_object_id=client.object_id)
        ml = MachineLearning(self, "ml", env=env, resource_group=resource_group, tenant_id=client.tenant_id)
        logs = ml.log_analytics.id
        secrets = SecretStore(
            self, "secrets", env=env, resource_group=resource_group, client=client, log_analytics_id=logs
        )
        data = ChurnDataStorage(self, "data", env=env, resource_group=resource_group, log_analytics_id=logs)
        identity.assign_roles(
            {
                "resource_group": resource_group.id,
                "ml_workspace": ml.workspace.id,
                "ml_storage": ml.storage.id,
                "key_vault": secrets.vault.id,
                "data_account": data.account.id,
                "data_container": data.container.id,
            }
        )
        # `release` runs as the deploying principal unless the pipeline's modelConnection says otherwise. It
        # reads the registered model's files (a reader on the ML storage), and in `churndata` the build's
        # test set and the slot's lock, a leased blob under locks/ (a lease is a write, so a contributor
        # there). Neither account allows shared keys.
        for area, scope_id, role in (
            ("data", data.container.id, "Storage Blob Data Contributor"),
            ("ml_storage", ml.storage.id, "Storage Blob Data Reader"),
        ):
            RoleAssignment(
                self, f"deployer_{area}_access", scope=scope_id, principal_id=client.object_id,
                role_definition_name=role,
            )
        databricks = DatabricksPlatform(
            self, "databricks", env=env, resource_group=resource_group, vault=secrets.vault,
            automation_client_id=identity.client_id, source_root=source_root,
            vault_access=secrets.databricks_access, teardown=teardown, config_file=config_file,
        )
        alerts = ServingAlerts(self, "alerts", env=env, resource_group=resource_group, log_analytics=ml.log_analytics)
        outputs = {
            "subscription_id": client.subscription_id,
            "tenant_id": client.tenant_id,
            "resource_group": resource_group.name,
            "location": resource_group.location,
            "ml_workspace_name": ml.workspace.name,
            "mlflow_tracking_uri": ml.mlflow_tracking_uri,
            "databricks_host": databricks.host,
            "databricks_workspace_id": databricks.workspace.id,
            "key_vault_uri": secrets.vault.vault_uri,
            "client_secret_name": env.secret.name,
            "automation_client_id": identity.client_id,
            "automation_application_object_id": identity.application.object_id,
            "data_account": data.account.name,
            "data_container": data.container.name,
            "train_job_id": databricks.train_job.id,
            "deploy_job_id": databricks.deploy_job.id,
            "score_job_id": databricks.score_job.id,
            "monitor_job_id": databricks.monitor_job.id,
            # Where `release` points each endpoint's diagnostic setting, so the alert rules see its traffic.
            "log_analytics_workspace_id": ml.log_analytics.id,
            "alerts_action_group_id": alerts.action_group.id,
        }
        for name, value in outputs.items():
            TerraformOutput(self, name, value=value)
        # All of them, job ids included: the notebooks' `load_outputs` requires every name, like the CLI's.
        databricks.publish_outputs(outputs)

    def _configure_terraform(self, env: EnvConfig) -> None:
        self.add_override("terraform.required_version", f"~> {TERRAFORM_VERSION}")
        # The prebuilt azurerm bindings declare the short source "azurerm", which Terraform reads as
        # hashicorp/azurerm; spelled out like the other providers' sources.
        self.add_override("terraform.required_providers.azurerm.source", "hashicorp/azurerm")
        AzurermProvider(
            self,
            "azurerm",
            features=[self._destroy_behaviour(env)],
            # Exactly the stack's providers, never a whole preset; none where an administrator registered them.
            resource_provider_registrations="none",
            resource_providers_to_register=list(RESOURCE_PROVIDERS) if env.register_resource_providers else None,
            subscription_id=env.subscription_id,  # unset: ARM_SUBSCRIPTION_ID at plan time
            environment=env.terraform_environment,
            storage_use_azuread=True,  # the accounts have shared keys off
        )
        AzureadProvider(self, "azuread", environment=env.terraform_environment)
        if env.state_backend:
            AzurermBackend(
                self,
                resource_group_name=env.state_backend.resource_group,
                storage_account_name=env.state_backend.storage_account,
                container_name=env.state_backend.container,
                key=f"{env.stack_name}.tfstate",
                use_azuread_auth=True,
                subscription_id=env.subscription_id,
                environment=env.terraform_environment,
            )
        else:
            LocalBackend(self)  # terraform.churn-<env>.tfstate beside cdktf.json, cdktn's default place

    @staticmethod
    def _destroy_behaviour(env: EnvConfig) -> AzurermProviderFeatures:
        """What `destroy` leaves behind. A disposable environment (dev) leaves nothing, so `cdktn deploy` can
        re-create it under the same names at once; any other keeps Azure's safety nets."""
        disposable = env.disposable
        return AzurermProviderFeatures(
            key_vault=[
                AzurermProviderFeaturesKeyVault(
                    # A purge-protected vault cannot be purged; a disposable one is, so its name is free again.
                    purge_soft_delete_on_destroy=disposable,
                    recover_soft_deleted_key_vaults=True,
                )
            ],
            # Application Insights adds a "Smart Detection" action group and a Failure Anomalies rule that
            # Terraform does not manage; they would keep the group from being deleted.
            resource_group=[
                AzurermProviderFeaturesResourceGroup(prevent_deletion_if_contains_resources=not disposable)
            ],
            # An ML workspace stays soft-deleted for 14 days, and its name cannot be reused until it is purged.
            machine_learning=[AzurermProviderFeaturesMachineLearning(purge_soft_deleted_workspace_on_destroy=disposable)],
            log_analytics_workspace=[
                AzurermProviderFeaturesLogAnalyticsWorkspace(permanently_delete_on_destroy=disposable)
            ],
            # The managed resource group holds the workspace's Unity Catalog storage, which would stop its deletion.
            databricks_workspace=[AzurermProviderFeaturesDatabricksWorkspace(force_delete=disposable)],
        )
