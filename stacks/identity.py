"""The automation identity: the Entra ID application and service principal notebooks and pipelines run as.

Terraform creates no password for it: `python -m deploy rotate-secret` owns its credentials, so no
client secret ever lands in Terraform state. The deploying principals own the application, which is
what lets apply and rotation work with only Graph `Application.ReadWrite.OwnedBy`; the owners come from
config (`application_owners`), so a change of who runs apply is no change of owners. Azure DevOps
service connections and GitHub Actions jobs sign in as it, without a secret, through the federated
credentials `[[environments.<env>.federation]]` lists.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from cdktn import Fn, Precondition, TerraformResourceLifecycle
from cdktn_provider_azuread.application import Application
from cdktn_provider_azuread.application_federated_identity_credential import ApplicationFederatedIdentityCredential
from cdktn_provider_azuread.service_principal import ServicePrincipal
from cdktn_provider_azurerm.role_assignment import RoleAssignment
from constructs import Construct

from config import ConfigError, EnvConfig

# The audience Entra ID expects in tokens exchanged through workload identity federation.
FEDERATION_AUDIENCE = "api://AzureADTokenExchange"


class AutomationIdentity(Construct):
    def __init__(self, scope: Construct, id_: str, *, env: EnvConfig, deployer_object_id: str):
        super().__init__(scope, id_)
        self._env = env
        owners = list(env.application_owners) or [deployer_object_id]
        self.application = Application(
            self, "application", display_name=env.names.automation_app, owners=owners,
            sign_in_audience="AzureADMyOrg", prevent_duplicate_names=True,
            lifecycle=self._deployer_must_own(deployer_object_id) if env.application_owners else None,
        )
        self.service_principal = ServicePrincipal(
            self, "service_principal", client_id=self.application.client_id, owners=owners,
        )
        self.federated_credentials = [
            ApplicationFederatedIdentityCredential(
                self, f"federated_{wanted.name.replace('-', '_')}", application_id=self.application.id,
                display_name=f"{env.stack_name}-{wanted.name}", audiences=[FEDERATION_AUDIENCE],
                issuer=wanted.issuer, subject=wanted.subject,
                description=f"federation '{wanted.name}' of environment {env.name} in config/environments.toml",
            )
            for wanted in env.federation
        ]

    def _deployer_must_own(self, deployer_object_id: str) -> TerraformResourceLifecycle:
        """Refuse at plan time what Graph would refuse mid-apply: a principal changing an application it does
        not own (Application.ReadWrite.OwnedBy)."""
        return TerraformResourceLifecycle(precondition=[Precondition(
            condition=Fn.contains(list(self._env.application_owners), deployer_object_id),
            error_message=f"The principal running Terraform (object id {deployer_object_id}) is not in "
            f"application_owners of environment '{self._env.name}'; expected it listed in config/environments.toml "
            "(only an owner may change the automation application with Application.ReadWrite.OwnedBy).",
        )])

    @property
    def client_id(self) -> str:
        return self.application.client_id

    def assign_roles(self, scopes: Mapping[str, str]) -> list[RoleAssignment]:
        """One role assignment per configured entry, its symbolic scope resolved to a resource id in `scopes`."""
        assignments: list[RoleAssignment] = []
        seen: set[str] = set()
        for index, wanted in enumerate(self._env.role_assignments):
            # The logical id names role and scope, not the position, so reordering the config changes nothing.
            logical_id = f"role_{wanted.scope}_{re.sub(r'[^a-z0-9]+', '_', wanted.role.lower()).strip('_')}"
            if logical_id in seen:
                raise ConfigError(
                    self._env.name, f"role_assignments[{index}]",
                    f"'{wanted.role}' on '{wanted.scope}' is listed twice; expected each role and scope once",
                )
            seen.add(logical_id)
            assignments.append(
                RoleAssignment(
                    self, logical_id, scope=scopes[wanted.scope], role_definition_name=wanted.role,
                    principal_id=self.service_principal.object_id, principal_type="ServicePrincipal",
                    description=f"churn automation identity ({self._env.name}), from config/environments.toml",
                )
            )
        return assignments
