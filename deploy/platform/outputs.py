"""An environment's stack outputs, read from the file `cdktn deploy --outputs-file` writes.

The output names below are a contract with `stacks/`: the stack declares exactly these, at its
top level, and the README lists them. None of them is sensitive.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

from config import EnvConfig
from deploy.core.errors import UsageError


@dataclass(frozen=True)
class StackOutputs:
    subscription_id: str
    tenant_id: str
    resource_group: str
    location: str
    ml_workspace_name: str
    mlflow_tracking_uri: str
    databricks_host: str
    databricks_workspace_id: str  # the workspace's Azure resource id: Entra ID auth needs it
    key_vault_uri: str
    client_secret_name: str
    automation_client_id: str
    automation_application_object_id: str
    data_account: str
    data_container: str
    train_job_id: str
    deploy_job_id: str
    score_job_id: str
    monitor_job_id: str
    log_analytics_workspace_id: str  # the Azure resource id endpoints' diagnostic settings send their logs to
    alerts_action_group_id: str


OUTPUT_NAMES = tuple(field.name for field in fields(StackOutputs))


def load_outputs(env: EnvConfig, path: str | Path | None = None) -> StackOutputs:
    """Read `env`'s outputs; a missing or incomplete file is a UsageError that says how to make it."""
    if env.is_local:
        raise UsageError(f"environment '{env.name}' is local and has no stack outputs")
    path = Path(path or env.outputs_file)
    how = f"expected the file written by `cdktn deploy {env.stack_name} --outputs-file {_shown(path)}`"
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"outputs file {path} not found; {how}") from None
    except IsADirectoryError:
        raise UsageError(f"outputs file {path} is a directory; {how}") from None
    except UnicodeDecodeError:
        raise UsageError(f"outputs file {path} is not UTF-8 JSON text; {how}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"outputs file {path} is unreadable ({exc}); {how}") from None
    values = document.get(env.stack_name) if isinstance(document, dict) else None
    if not isinstance(values, dict):
        raise UsageError(f"outputs file {path} has no stack '{env.stack_name}'; {how}")
    missing = [name for name in OUTPUT_NAMES if values.get(name) in (None, "")]
    if missing:
        raise UsageError(f"outputs file {path} lacks {', '.join(missing)}; {how} from the current stack")
    return StackOutputs(**{name: str(values[name]) for name in OUTPUT_NAMES})


Outputs = StackOutputs | str | Path | None  # what a command is given: the outputs, their file, or nothing


def resolve_outputs(env: EnvConfig, outputs: Outputs) -> StackOutputs | None:
    """The stack outputs an Azure environment needs (given, or read from a file); None for local."""
    if env.is_local:
        return None
    return outputs if isinstance(outputs, StackOutputs) else load_outputs(env, outputs)


def _shown(path: Path) -> str:
    """The path as a user would type it: relative to the working directory when it lies below it."""
    relative = os.path.relpath(path)
    return path.as_posix() if relative.startswith("..") else relative
