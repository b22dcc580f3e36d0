"""The environment's resource group: created by the stack, or a pre-created one it only looks up.

A pre-created group (`existing_resource_group` in config) suits a deploying principal whose rights end at
that group; the stack then never creates, changes or deletes the group itself, only what it puts in it.
"""

from __future__ import annotations

from cdktn import Postcondition, TerraformResourceLifecycle
from cdktn_provider_azurerm.data_azurerm_resource_group import DataAzurermResourceGroup
from cdktn_provider_azurerm.resource_group import ResourceGroup
from constructs import Construct

from config import EnvConfig

# What the other constructs read of the group: its name, location and id.
ResourceGroupLike = ResourceGroup | DataAzurermResourceGroup


def environment_resource_group(scope: Construct, env: EnvConfig) -> ResourceGroupLike:
    if not env.existing_resource_group:
        return ResourceGroup(scope, "group", name=env.names.resource_group, location=env.location, tags=env.tags)
    # Every resource goes where the group is, and the MLflow URI names env.location: the two must agree,
    # which only Azure knows, so the plan checks it as soon as it has read the group.
    return DataAzurermResourceGroup(
        scope, "group", name=env.existing_resource_group,
        lifecycle=TerraformResourceLifecycle(postcondition=[Postcondition(
            condition=f'${{self.location == "{env.location}"}}',
            error_message=f"Resource group {env.existing_resource_group} is in ${{self.location}}; expected "
            f"{env.location}, the location of environment '{env.name}' in config/environments.toml.",
        )]),
    )
