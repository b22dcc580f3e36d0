"""Does the automation identity hold exactly the role assignments its environment's config lists?

The config names roles and symbolic scopes (`env.role_assignments`); this module turns them into
role definition ids (the role definitions API) and resource ids (the stack outputs and
config.naming), lists the identity's assignments that reach the environment's resource group
(at it, inside it, or inherited from above it, such as a subscription-wide role) with
azure-mgmt-authorization, and reports the difference both ways. It only reads: the caller
needs `Microsoft.Authorization/roleAssignments/read` and `roleDefinitions/read` on the resource
group, which Reader (or any broader role) gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from config import EnvConfig
from deploy.platform.outputs import StackOutputs

if TYPE_CHECKING:
    from azure.mgmt.authorization import AuthorizationManagementClient


@dataclass(frozen=True)
class Assignment:
    role: str
    scope: str  # an Azure resource id

    def __str__(self) -> str:
        return f"{self.role} at {self.scope}"


@dataclass(frozen=True)
class Drift:
    principal_id: str
    missing: tuple[Assignment, ...]
    unexpected: tuple[Assignment, ...]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected)

    def summary(self) -> str:
        if not self:
            return "the identity holds exactly its configured role assignments"
        parts = [f"missing {a}" for a in self.missing] + [f"unexpected {a}" for a in self.unexpected]
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "principal_id": self.principal_id,
            "missing": [{"role": a.role, "scope": a.scope} for a in self.missing],
            "unexpected": [{"role": a.role, "scope": a.scope} for a in self.unexpected],
        }


def scope_ids(env: EnvConfig, outputs: StackOutputs) -> dict[str, str]:
    """Each symbolic scope of the config as the resource id it stands for in this environment."""
    group = f"/subscriptions/{outputs.subscription_id}/resourceGroups/{outputs.resource_group}"
    data_account = f"{group}/providers/Microsoft.Storage/storageAccounts/{outputs.data_account}"
    return {
        "resource_group": group,
        "ml_workspace": f"{group}/providers/Microsoft.MachineLearningServices/workspaces/{outputs.ml_workspace_name}",
        "ml_storage": f"{group}/providers/Microsoft.Storage/storageAccounts/{env.names.ml_storage_account}",
        "key_vault": f"{group}/providers/Microsoft.KeyVault/vaults/{env.names.key_vault}",
        "data_account": data_account,
        "data_container": f"{data_account}/blobServices/default/containers/{outputs.data_container}",
    }


def check(
    client: AuthorizationManagementClient, env: EnvConfig, outputs: StackOutputs, principal_id: str
) -> Drift:
    """Compare `principal_id`'s assignments that reach the resource group with `env.role_assignments`."""
    scopes = scope_ids(env, outputs)
    group = scopes["resource_group"]
    role_names: dict[str, str] = {}  # role definition GUID -> role name
    expected: dict[tuple[str, str], Assignment] = {}
    missing: list[Assignment] = []
    for configured in env.role_assignments:
        wanted = Assignment(configured.role, scopes[configured.scope])
        definition = _role_definition_id(client, group, configured.role)
        if definition is None:  # a role name Azure doesn't know can't be assigned: report it as missing
            missing.append(wanted)
            continue
        role_names[_guid(definition)] = configured.role
        expected[(_guid(definition), _normal(wanted.scope))] = wanted

    # `principalId eq` returns the principal's assignments at, above and below the group. Those above
    # it (a subscription-wide Contributor, say) reach the environment too and no config entry can
    # declare them, so they always count as unexpected: least privilege is about what it can do here.
    held: dict[tuple[str, str], tuple[str, str]] = {}  # (GUID, normalised scope) -> (definition id, scope)
    for assignment in client.role_assignments.list_for_scope(group, filter=f"principalId eq '{principal_id}'"):
        key = (_guid(assignment.role_definition_id), _normal(assignment.scope))
        held[key] = (assignment.role_definition_id, assignment.scope)

    missing += [wanted for key, wanted in expected.items() if key not in held]
    unexpected = []
    for key, (definition_id, scope) in sorted(held.items()):
        if key in expected:
            continue
        guid = key[0]
        if guid not in role_names:
            role_names[guid] = client.role_definitions.get_by_id(definition_id).role_name or guid
        unexpected.append(Assignment(role_names[guid], scope))
    return Drift(principal_id, tuple(missing), tuple(unexpected))


def _role_definition_id(client: AuthorizationManagementClient, scope: str, role: str) -> str | None:
    quoted = role.replace("'", "''")  # OData string literal
    for definition in client.role_definitions.list(scope, filter=f"roleName eq '{quoted}'"):
        if definition.role_name == role:
            return definition.id
    return None


def _guid(definition_id: str) -> str:
    return definition_id.rstrip("/").rsplit("/", 1)[-1].lower()


def _normal(resource_id: str) -> str:
    return resource_id.rstrip("/").lower()
