"""Serving targets: local scoring servers on 127.0.0.1, or Azure ML managed online endpoints.

Importing this package is cheap; each target imports its SDK when it is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from config import EnvConfig
    from deploy.platform.outputs import StackOutputs
    from deploy.release.targets.base import Target


def for_environment(env: EnvConfig, outputs: StackOutputs | None) -> Target:
    """The target that serves `env`'s slots."""
    if env.is_local:
        from deploy.release.targets.local import LocalTarget

        return LocalTarget(env)
    from deploy.release.targets.azureml import AzureMLTarget

    assert outputs is not None, "Azure environments need their stack outputs"
    return AzureMLTarget.from_outputs(env, outputs)
