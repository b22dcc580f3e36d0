"""The CDK Terrain app: one `churn-<env>` stack per Azure environment in config/environments.toml."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from config import EnvConfig

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

# Names the one stack a `cdktn destroy` is about to tear down (`make infra-destroy` sets it). Only that
# stack's Databricks workspace loses its prevent_destroy, and only in a disposable environment.
TEARDOWN_VARIABLE = "CHURN_TEARDOWN"


def main() -> int:
    from config import ConfigError, config_path, load_all

    try:
        environments = load_all()
        teardown = teardown_stack(environments, os.environ.get(TEARDOWN_VARIABLE))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2

    from cdktn import App

    from stacks.databricks import MissingSource
    from stacks.platform import ChurnPlatformStack

    app = App()
    try:
        for env in environments.values():
            if not env.is_local:
                ChurnPlatformStack(app, env, teardown=env.stack_name == teardown, config_file=config_path())
    except (ConfigError, MissingSource) as exc:
        print(exc, file=sys.stderr)
        return 2
    app.synth()
    return 0


def teardown_stack(environments: Mapping[str, EnvConfig], value: str | None) -> str | None:
    """The stack `value` names, checked: an Azure environment's, and disposable (never a purge-protected one)."""
    from config import ConfigError

    if not value:
        return None
    stacks = {env.stack_name: env for env in environments.values() if not env.is_local}
    if value not in stacks:
        raise ConfigError(None, None, f"{TEARDOWN_VARIABLE}={value} names no stack; expected one of "
                          f"{', '.join(sorted(stacks))}")
    if not stacks[value].disposable:
        raise ConfigError(stacks[value].name, "purge_protection", f"{TEARDOWN_VARIABLE}={value}: the environment "
                          "is purge-protected, which the kit never tears down; expected a disposable environment")
    return value


if __name__ == "__main__":
    sys.exit(main())
