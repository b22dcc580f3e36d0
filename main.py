"""The CDK Terrain app: one `churn-<env>` stack per Azure environment in config/environments.toml."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


def main() -> int:
    from config import ConfigError, load_all

    try:
        environments = load_all()
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
                ChurnPlatformStack(app, env)
    except (ConfigError, MissingSource) as exc:
        print(exc, file=sys.stderr)
        return 2
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
