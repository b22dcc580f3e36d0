"""Where an environment's MLflow runs, models and churn data live.

MLflow is the one tracking and registry API: the local SQLite store and an Azure ML workspace
(through azureml-mlflow) both answer it, so only these locations differ between environments.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config import EnvConfig
from deploy.platform.outputs import StackOutputs

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from deploy.platform.locks import Locks


def local_data_root(env: EnvConfig) -> Path:
    """The local stand-in for the `churndata` container."""
    return env.local.state_dir / "churndata"


def tracking_uri(env: EnvConfig, outputs: StackOutputs | None) -> str:
    if env.is_local:
        return f"sqlite:///{env.local.state_dir / 'mlflow.db'}"
    assert outputs is not None, "Azure environments need their stack outputs"
    return outputs.mlflow_tracking_uri


def data_root(env: EnvConfig, outputs: StackOutputs | None) -> str:
    """The churn data container: a local folder, or an abfss URI."""
    if env.is_local:
        return str(local_data_root(env))
    assert outputs is not None, "Azure environments need their stack outputs"
    # Direct abfss access (DBFS mounts are deprecated), in the environment's cloud.
    return f"abfss://{outputs.data_container}@{outputs.data_account}.dfs.{env.cloud.storage_suffix}"


def use_environment(env: EnvConfig, outputs: StackOutputs | None = None) -> str:
    """Point MLflow (tracking and registry) at `env`; returns the tracking URI. Imports mlflow."""
    # MLflow otherwise reports usage to its telemetry host; nothing here may leave the machine.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    # Progress bars of artifact downloads would flood the commands' stderr progress lines.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    uri = tracking_uri(env, outputs)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if env.is_local:
        _initialize_local_store(env)
    return uri


def _initialize_local_store(env: EnvConfig) -> None:
    """Create (or migrate) the local SQLite store one process at a time: two commands starting together on a
    fresh environment would otherwise run the same schema migration twice, and one of them fails."""
    from mlflow.tracking import MlflowClient

    from deploy.platform.locks import Locks

    env.local.state_dir.mkdir(parents=True, exist_ok=True)
    # "Creating initial MLflow database tables..." is MLflow's business, not the command's output.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    with Locks(str(env.local.state_dir)).hold("mlflow-store", "the local MLflow store", wait_seconds=120):
        MlflowClient().search_experiments(max_results=1)


def ensure_experiment(env: EnvConfig, name: str | None = None) -> str:
    """The id of experiment `name` (training's `automl-churn` by default), created if missing (call after
    `use_environment`)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from deploy.core.contract import EXPERIMENT

    name = name or EXPERIMENT
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # Local artifacts go beside the database, not into whatever the working directory is.
    location = (env.local.state_dir / "mlartifacts").as_uri() if env.is_local else None
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException as exc:  # another command created it since we looked
        created = mlflow.get_experiment_by_name(name) if exc.error_code == "RESOURCE_ALREADY_EXISTS" else None
        if created is None:
            raise
        return created.experiment_id



def finished_runs(experiment_id: str, build: str) -> list[Any]:
    """The build's finished runs in the experiment, newest first.

    Only the tag goes into the server-side filter and the status is checked here: Azure ML's MLflow
    does not support `attributes.status` in a filter. Call after `use_environment`."""
    from mlflow.tracking import MlflowClient

    from deploy.core.contract import TAG_BUILD

    runs = MlflowClient().search_runs([experiment_id], f"tags.{TAG_BUILD} = '{build}'", order_by=["start_time DESC"])
    return [run for run in runs if run.info.status == "FINISHED"]


def environment_locks(env: EnvConfig, outputs: StackOutputs | None, credential: TokenCredential | None = None) -> Locks:
    """`env`'s locks, in its churn data container: a local folder, or (on Azure) leases in `churndata` taken as
    `credential` (default: the caller's Entra ID identity)."""
    from deploy.platform import storage
    from deploy.platform.locks import Locks

    root = data_root(env, outputs)
    if storage.is_abfss(root) and credential is None:
        from deploy.platform.azure_auth import credential as env_credential

        credential = env_credential(env)
    return Locks(root, credential)
