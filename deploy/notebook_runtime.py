"""What the notebooks run on: a local stand-in for Databricks `dbutils`, a cell-by-cell notebook runner,
and the setup a job notebook does before it calls into the project code.

The notebooks stay thin (widgets, then one call into this module), so `train --env local` and the
tests execute the very same notebook files with `LocalDbutils` in place of Databricks' `dbutils`.
Only `sign_in_automation_identity` is Databricks-only in practice, and it reads nothing but the
secret scope and the environment's outputs, so the tests drive it with the stand-in too.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config import EnvConfig, load_environment
from deploy.core import contract
from deploy.core.errors import UsageError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from pyspark.sql import SparkSession

    from deploy.platform.outputs import StackOutputs

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOK_HEADER = "# Databricks notebook source"
CELL_SEPARATOR = "# COMMAND ----------"
# The Key Vault-backed scope every environment's workspace has (stacks/databricks.py SECRET_SCOPE).
SECRET_SCOPE = "churn"  # noqa: S105 - a scope name, not a secret
DEPLOY_TYPES = ("Stage", "Prod")


class NotebookExit(Exception):  # named after dbutils.notebook.exit, which raises to stop a notebook
    """Raised by the stand-in's `dbutils.notebook.exit(value)`: the notebook stops there and returns `value`."""

    def __init__(self, value: str):
        super().__init__(value)
        self.value = value


class LocalWidgets:
    """`dbutils.widgets`: a notebook declares a widget with a default; a job's parameters override it."""

    def __init__(self, parameters: dict[str, str] | None = None):
        self._parameters = dict(parameters or {})
        self._values: dict[str, str] = {}

    def text(self, name: str, defaultValue: str = "", label: str | None = None) -> None:
        self._values[name] = self._parameters.get(name, defaultValue)

    def dropdown(self, name: str, defaultValue: str, choices: list[str], label: str | None = None) -> None:
        if defaultValue not in choices:
            raise ValueError(f"widget {name}: default {defaultValue!r} is not one of {choices}")
        value = self._parameters.get(name, defaultValue)
        if value not in choices:
            raise UsageError(f"notebook parameter {name}={value!r} is invalid; expected one of {', '.join(choices)}")
        self._values[name] = value

    def get(self, name: str) -> str:
        if name not in self._values:
            raise ValueError(f"InputWidgetNotDefined: no input widget named {name} is defined")
        return self._values[name]

    def getAll(self) -> dict[str, str]:
        return dict(self._values)

    def removeAll(self) -> None:
        self._values.clear()


class LocalSecrets:
    """`dbutils.secrets`, holding `{(scope, key): value}`."""

    def __init__(self, secrets: dict[tuple[str, str], str] | None = None):
        self._secrets = dict(secrets or {})

    def get(self, scope: str, key: str) -> str:
        if (scope, key) not in self._secrets:
            raise ValueError(f"Secret does not exist with scope: {scope} and key: {key}")
        return self._secrets[(scope, key)]


class LocalNotebookUtils:
    def exit(self, value: str) -> None:
        raise NotebookExit(value)


@dataclass
class LocalDbutils:
    """The stand-in for Databricks `dbutils`, plus what a local run needs that a workspace would hold:
    the environments file (`--config`) and a churn CSV to use instead of the data container (`--data`)."""

    widgets: LocalWidgets = field(default_factory=LocalWidgets)
    secrets: LocalSecrets = field(default_factory=LocalSecrets)
    notebook: LocalNotebookUtils = field(default_factory=LocalNotebookUtils)
    config_path: Path | None = None
    data_csv: Path | None = None


def local_dbutils(
    parameters: dict[str, str],
    config_path: str | Path | None = None,
    data_csv: str | Path | None = None,
    secrets: dict[tuple[str, str], str] | None = None,
) -> LocalDbutils:
    return LocalDbutils(
        widgets=LocalWidgets(parameters),
        secrets=LocalSecrets(secrets),
        config_path=Path(config_path) if config_path else None,
        data_csv=Path(data_csv) if data_csv else None,
    )


def run_notebook(name_or_path: str | Path, dbutils: Any) -> str | None:
    """Execute a Databricks source-format notebook cell by cell, with `dbutils` in its namespace, as a
    job would; returns the value it passed to `dbutils.notebook.exit`, or None."""
    path = Path(name_or_path)
    if not path.suffix:
        path = NOTEBOOKS_DIR / f"{path}.py"
    source = path.read_text()
    if not source.startswith(NOTEBOOK_HEADER):
        raise ValueError(f"{path} is not a Databricks notebook; expected it to start with '{NOTEBOOK_HEADER}'")
    namespace: dict[str, Any] = {"dbutils": dbutils, "__file__": str(path), "__name__": "__main__"}
    # What a notebook prints is its log; stdout belongs to the command's result (--json).
    with contextlib.redirect_stdout(sys.stderr):
        for number, cell in enumerate(source.split(CELL_SEPARATOR), start=1):
            try:
                exec(compile(cell, f"{path}[cell {number}]", "exec"), namespace)  # noqa: S102 - our own notebook
            except NotebookExit as stop:
                return stop.value
    return None


def environment(dbutils: Any, env_name: str) -> EnvConfig:
    """The notebook's environment, from the `env` widget (the jobs set it; a manual run must too)."""
    if not env_name:
        raise UsageError("notebook parameter env is empty; expected the environment name, e.g. dev")
    from config import ConfigError

    try:
        return load_environment(env_name, dbutils.config_path if isinstance(dbutils, LocalDbutils) else None)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def sign_in_automation_identity(dbutils: Any, env: EnvConfig, outputs: StackOutputs) -> TokenCredential:
    """Sign in as the automation identity with its secret from the Key Vault-backed scope.

    The AZURE_* variables it exports are what azure-identity's environment credential reads, so
    azureml-mlflow (the tracking URI) and every other SDK in the notebook act as that identity:
    no user login, and no secret in code or in the job's parameters.
    """
    from azure.identity import ClientSecretCredential

    from deploy.platform.azure_auth import identity_options

    secret = dbutils.secrets.get(scope=SECRET_SCOPE, key=outputs.client_secret_name)
    os.environ.update(
        {
            "AZURE_CLIENT_ID": outputs.automation_client_id,
            "AZURE_TENANT_ID": outputs.tenant_id,
            "AZURE_CLIENT_SECRET": secret,
            "AZURE_AUTHORITY_HOST": env.cloud.authority_host,
        }
    )
    return ClientSecretCredential(outputs.tenant_id, outputs.automation_client_id, secret, **identity_options(env))


def build_parameters(build: str, source: str) -> tuple[str, str]:
    """The hackathon guide's manual fallback: an empty build becomes a uuid4, an empty source `manual`."""
    return (build.strip() or str(uuid.uuid4()), source.strip() or contract.MANUAL_SOURCE)


def train(dbutils: Any, env_name: str, build: str, source: str, force: bool = False) -> str:
    """The `train_churn` notebook's body: train the build and return its run as JSON (the notebook's exit value)."""
    from deploy.platform.outputs import load_outputs
    from deploy.training import train_build

    env = environment(dbutils, env_name)
    build, source = build_parameters(build, source)
    outputs, credential = None, None
    if not env.is_local:
        outputs = load_outputs(env)
        credential = sign_in_automation_identity(dbutils, env, outputs)
    # Databricks' own dbutils has neither attribute: the workspace's config and data container apply.
    data_csv = dbutils.data_csv if isinstance(dbutils, LocalDbutils) else None
    result = train_build(env, build, source, data_csv, outputs, force=force, credential=credential)
    return json.dumps(result.as_dict(), sort_keys=True)


def deploy(dbutils: Any, env_name: str, build: str, deploy_type: str) -> str:
    """The `deploy_churn` notebook's body: release the build (empty: the latest) into the slot `deploy_type`."""
    from deploy.platform.outputs import load_outputs
    from deploy.release.rollout import release

    env = environment(dbutils, env_name)
    if deploy_type not in DEPLOY_TYPES:
        raise UsageError(f"notebook parameter deployType={deploy_type!r} is invalid; expected Stage or Prod")
    outputs = None
    if not env.is_local:
        outputs = load_outputs(env)
        sign_in_automation_identity(dbutils, env, outputs)
    result = release(env, deploy_type.lower(), build.strip() or "latest", force=False, outputs=outputs)
    return json.dumps(result.as_dict(), sort_keys=True, default=str)



def monitor(dbutils: Any, env_name: str, slot: str, window: str) -> str:
    """The `monitor_churn` notebook's body: monitor the slot over the window and, on Databricks, start
    churn-train when drift or decay crossed a threshold. Returns the verdict as JSON (the exit value)."""
    from datetime import datetime

    from deploy.monitor import exit_status
    from deploy.monitoring import retrain
    from deploy.monitoring.run import run_monitor
    from deploy.platform.outputs import load_outputs

    env = environment(dbutils, env_name)
    outputs, credential, spark = None, None, None
    if not env.is_local:
        outputs = load_outputs(env)
        credential = sign_in_automation_identity(dbutils, env, outputs)
        from pyspark.sql import SparkSession  # the job cluster's session: it reads the Delta score table

        spark = SparkSession.getActiveSession()
    result = run_monitor(env, slot, window.strip(), outputs=outputs, credential=credential, spark=spark)
    if result.retrain_wanted:
        at = datetime.fromisoformat(result.at)
        result.retrain = retrain.planned(env, at) if env.is_local else \
            retrain.start_on_databricks(env, outputs, at, credential)
    document = result.as_dict()
    return json.dumps({**document, "exit_status": exit_status(document)}, sort_keys=True, default=str)


def score(
    dbutils: Any, env_name: str, slot: str, version: str, scoring_date: str, input_uri: str,
    spark: SparkSession | None = None,
) -> str:
    """The `score_churn` notebook's body: score the customer base for one date; returns the run as JSON.

    On Databricks `spark` is the cluster's session, given the automation identity's access to the data
    container; locally (no `spark`) a local-mode session is started, or the running one reused.
    """
    from deploy.platform.outputs import load_outputs
    from deploy.scoring import score_customers
    from deploy.scoring.request import scoring_request

    env = environment(dbutils, env_name)
    request = scoring_request(scoring_date, version, slot, input_uri)
    outputs = None
    if not env.is_local:
        if spark is None:
            raise UsageError(f"environment '{env.name}' scores on Databricks; run the notebook on the job's cluster")
        outputs = load_outputs(env)
        sign_in_automation_identity(dbutils, env, outputs)
        spark_reads_data_container(dbutils, spark, env, outputs)
    elif spark is None:
        from deploy.scoring.local_spark import local_session

        spark = local_session()
    result = score_customers(spark, env, request, outputs)
    return json.dumps(result.as_dict(), sort_keys=True, default=str)


def spark_reads_data_container(dbutils: Any, spark: SparkSession, env: EnvConfig, outputs: StackOutputs) -> None:
    """Let the session's abfss reads and writes of the data account act as the automation identity
    (OAuth client credentials, the ABFS driver's own settings; DBFS mounts are deprecated).

    Session settings only: nothing is stored, and Spark redacts settings whose name says secret."""
    host = f"{outputs.data_account}.dfs.{env.cloud.storage_suffix}"
    secret = dbutils.secrets.get(scope=SECRET_SCOPE, key=outputs.client_secret_name)
    settings = {
        "fs.azure.account.auth.type": "OAuth",
        "fs.azure.account.oauth.provider.type": "org.apache.hadoop.fs.azurebfs.oauth2.ClientCredsTokenProvider",
        "fs.azure.account.oauth2.client.id": outputs.automation_client_id,
        "fs.azure.account.oauth2.client.secret": secret,
        "fs.azure.account.oauth2.client.endpoint": f"{env.cloud.authority_host}/{outputs.tenant_id}/oauth2/token",
    }
    for key, value in settings.items():
        spark.conf.set(f"{key}.{host}", value)
