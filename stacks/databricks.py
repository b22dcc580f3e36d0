"""Azure Databricks: the premium workspace, the secret scope on the environment's vault, the project code
uploaded into the workspace, and the jobs that run the notebooks: `train` and `deploy` (started by the
pipeline and the CLI), `score` and `monitor` (on schedules from config, paused in dev).

The databricks provider talks to the workspace it is created with, through Entra ID (the workspace's
Azure resource id plus whatever Azure login runs Terraform); no personal access token exists anywhere.
Because the provider is configured from the workspace in the same stack, a plan that would replace the
workspace (a new name, region, managed resource group or encryption setting) would leave the provider
without a host while the old workspace's objects still had to be deleted. The workspace is therefore
`prevent_destroy`: Terraform refuses such a plan before it changes anything. Only a deliberate teardown
of a disposable environment lifts it (main.py, `CHURN_TEARDOWN`; docs/runbook.md).
The workspace holds a copy of the repository layout under /Shared/churn-mlops, so the notebooks import
`config` and `deploy` exactly as they do locally, and read this environment's stack outputs from
outputs/churn-<env>.json with the same `load_outputs` the CLI uses.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cdktn import Fn, TerraformLocal, TerraformResourceLifecycle
from cdktn_provider_azurerm.databricks_workspace import DatabricksWorkspace
from cdktn_provider_azurerm.key_vault import KeyVault
from cdktn_provider_azurerm.role_assignment import RoleAssignment
from cdktn_provider_databricks.data_databricks_node_type import DataDatabricksNodeType
from cdktn_provider_databricks.directory import Directory
from cdktn_provider_databricks.job import (
    Job,
    JobEmailNotifications,
    JobJobCluster,
    JobJobClusterNewCluster,
    JobQueue,
    JobRunAs,
    JobSchedule,
    JobTask,
    JobTaskLibrary,
    JobTaskLibraryPypi,
    JobTaskNotebookTask,
)
from cdktn_provider_databricks.notebook import Notebook
from cdktn_provider_databricks.permissions import Permissions, PermissionsAccessControl
from cdktn_provider_databricks.provider import DatabricksProvider
from cdktn_provider_databricks.secret_acl import SecretAcl
from cdktn_provider_databricks.secret_scope import SecretScope, SecretScopeKeyvaultMetadata
from cdktn_provider_databricks.service_principal import ServicePrincipal
from cdktn_provider_databricks.workspace_file import WorkspaceFile
from constructs import Construct

from config import EnvConfig
from stacks.resource_group import ResourceGroupLike

WORKSPACE_ROOT = "/Shared/churn-mlops"
# The scope notebooks read the automation identity's secret from: dbutils.secrets.get(SECRET_SCOPE, <secret name>).
SECRET_SCOPE = "churn"  # noqa: S105 - a scope name, not a secret
NOTEBOOKS = ("train_churn", "deploy_churn", "score_churn", "monitor_churn")
PROJECT_PACKAGES = ("config", "deploy")
ENVIRONMENTS_FILE = "config/environments.toml"
PROJECT_DATA_FILES = (ENVIRONMENTS_FILE, "config/schema.json")
# The model's own libraries, in every job at the versions in Pipfile.lock, so the model is trained, scored and
# judged with the scikit-learn the release machine loads it with (the runtime's own are older). skops and
# cloudpickle serialize it; pyarrow carries pandas data through Spark and must be built for the locked numpy.
MODEL_LIBRARIES = ("scikit-learn", "numpy", "pandas", "scipy", "skops", "cloudpickle", "pyarrow")
# What each notebook imports beyond them, pinned the same way.
TRAIN_LIBRARIES = ("mlflow", "azureml-mlflow", "azure-identity", "azure-storage-file-datalake", *MODEL_LIBRARIES)
DEPLOY_LIBRARIES = ("mlflow", "azureml-mlflow", "azure-identity", "azure-ai-ml", *MODEL_LIBRARIES)
SCORE_LIBRARIES = ("mlflow", "azureml-mlflow", "azure-identity", "azure-storage-file-datalake", *MODEL_LIBRARIES)
# The monitor also reads the endpoints' metrics, draws its report and starts churn-train.
MONITOR_LIBRARIES = (*SCORE_LIBRARIES, "azure-mgmt-monitor", "databricks-sdk", "matplotlib")
MONITOR_WINDOW = "7d"


class MissingSource(Exception):
    """A file the workspace upload needs is not in the repository; main.py prints it as one line."""


class DatabricksPlatform(Construct):
    def __init__(
        self, scope: Construct, id_: str, *, env: EnvConfig, resource_group: ResourceGroupLike, vault: KeyVault,
        automation_client_id: str, source_root: Path, vault_access: RoleAssignment, teardown: bool = False,
        config_file: Path | None = None,
    ):
        """`vault_access`: the AzureDatabricks app's role on `vault`, which the secret scope needs to work.
        `teardown`: this synthesis is for `cdktn destroy`, so the workspace may be destroyed.
        `config_file`: the environments file this stack was synthesized from (default: the repository's), which
        the workspace gets as config/environments.toml, so notebooks know an environment defined elsewhere."""
        super().__init__(scope, id_)
        self._env = env
        self._source_root = source_root
        self._config_file = config_file or source_root / ENVIRONMENTS_FILE
        self.workspace = DatabricksWorkspace(
            self, "workspace", name=env.names.databricks_workspace, resource_group_name=resource_group.name,
            location=resource_group.location, sku="premium",
            managed_resource_group_name=env.names.databricks_managed_resource_group,
            infrastructure_encryption_enabled=True, tags=env.tags,
            lifecycle=TerraformResourceLifecycle(prevent_destroy=not teardown),
        )
        self.host = TerraformLocal(self, "host", f"https://{self.workspace.workspace_url}").as_string
        self.provider = DatabricksProvider(
            self, "provider", host=self.host, azure_workspace_resource_id=self.workspace.id,
        )
        self.scope = SecretScope(
            self, "secret_scope", name=SECRET_SCOPE, backend_type="AZURE_KEYVAULT",
            keyvault_metadata=SecretScopeKeyvaultMetadata(resource_id=vault.id, dns_name=vault.vault_uri),
            depends_on=[vault_access],
        )
        # The automation identity becomes a workspace principal, so jobs can run as it and it can read the scope.
        self.automation = ServicePrincipal(
            self, "automation", application_id=automation_client_id, display_name=env.names.automation_app,
        )
        self.automation_id = self.automation.application_id
        SecretAcl(
            self, "automation_reads_scope", scope=self.scope.name, principal=self.automation_id, permission="READ"
        )
        self._upload_project()
        # Looked up once the workspace exists: on the first deploy this data source waits for it.
        self.node_type = DataDatabricksNodeType(self, "smallest_node", local_disk=True, depends_on=[self.workspace])
        self._locked = locked_versions(source_root)
        train_minutes = env.training.job_timeout_minutes
        self.train_job = self._job(
            "train", {"env": env.name, "buildNumber": "", "buildSource": ""}, TRAIN_LIBRARIES, train_minutes
        )
        self.deploy_job = self._job(
            "deploy", {"env": env.name, "buildNumber": "", "deployType": "Stage"}, DEPLOY_LIBRARIES, train_minutes
        )
        scoring, monitoring = env.scoring, env.monitoring
        # Batch scoring of every customer: a bigger customer base is more workers in config, not a code change.
        self.score_job = self._job(
            "score", {"env": env.name, "slot": "prod", "version": "", "scoringDate": "", "input": ""},
            SCORE_LIBRARIES, scoring.job_timeout_minutes,
            cluster=self._cluster(workers=scoring.workers, node_type=scoring.node_type),
            schedule=self._schedule(scoring.schedule, scoring.timezone, scoring.paused),
        )
        # Watches the prod slot and starts churn-train when a threshold is crossed (it may: CAN_MANAGE_RUN below).
        self.monitor_job = self._job(
            "monitor", {"env": env.name, "slot": "prod", "window": MONITOR_WINDOW}, MONITOR_LIBRARIES,
            monitoring.job_timeout_minutes,
            schedule=self._schedule(monitoring.schedule, monitoring.timezone, monitoring.paused),
        )

    def publish_outputs(self, outputs: Mapping[str, str]) -> None:
        """Write the stack outputs into the workspace as `outputs/churn-<env>.json`, the CLI's file format."""
        stack = self._env.stack_name
        self._file_from_content(f"outputs/{stack}.json", Fn.base64encode(Fn.jsonencode({stack: dict(outputs)})))

    def _upload_project(self) -> None:
        # Recursive: the provider creates the sub-folders (notebooks/, deploy/core/, ...) implicitly and does not
        # track them, so a plain delete stops with DIRECTORY_NOT_EMPTY. The folder holds only what the stack uploads.
        self.directory = Directory(self, "project_directory", path=WORKSPACE_ROOT, delete_recursive=True)
        self.notebooks = {
            name: Notebook(
                self, f"notebook_{name}", path=f"{WORKSPACE_ROOT}/notebooks/{name}", language="PYTHON",
                content_base64=self._read_base64(self._source_root / f"notebooks/{name}.py"),
                depends_on=[self.directory],
            )
            for name in NOTEBOOKS
        }
        for relative in project_files(self._source_root):
            source = self._config_file if relative == ENVIRONMENTS_FILE else self._source_root / relative
            self._file_from_content(relative, self._read_base64(source))
        # The jobs run as the automation identity, which must be able to read what they execute.
        Permissions(
            self, "project_directory_access", directory_path=self.directory.path,
            access_control=[
                PermissionsAccessControl(service_principal_name=self.automation_id, permission_level="CAN_READ")
            ],
        )

    def _file_from_content(self, relative: str, content_base64: str) -> None:
        WorkspaceFile(
            self, "file_" + re.sub(r"[^A-Za-z0-9]+", "_", relative), path=f"{WORKSPACE_ROOT}/{relative}",
            content_base64=content_base64, depends_on=[self.directory],
        )

    @staticmethod
    def _read_base64(path: Path) -> str:
        try:
            return base64.b64encode(path.read_bytes()).decode("ascii")
        except FileNotFoundError:
            raise MissingSource(f"{path} not found; expected it in the repository (the workspace upload)") from None

    def _pinned(self, name: str) -> str:
        """`name==<locked version>`; a library the lock does not hold would install whatever is newest."""
        version = self._locked.get(name)
        if not version:
            raise MissingSource(f"{name} is not in Pipfile.lock's default packages; expected every job library locked")
        return f"{name}{version}"

    def _cluster(self, workers: int = 0, node_type: str = "") -> JobJobCluster:
        """A job cluster on the pinned runtime: one node, or a driver and `workers` workers."""
        shape: dict[str, Any] = {"num_workers": workers}
        if workers == 0:
            shape.update(
                spark_conf={"spark.databricks.cluster.profile": "singleNode", "spark.master": "local[*]"},
                custom_tags={"ResourceClass": "SingleNode"},
            )
        return JobJobCluster(
            job_cluster_key="single_node" if workers == 0 else "workers",
            new_cluster=JobJobClusterNewCluster(
                spark_version=self._env.databricks.spark_version, node_type_id=node_type or self.node_type.id,
                data_security_mode="SINGLE_USER", **shape,
            ),
        )

    @staticmethod
    def _schedule(cron: str, timezone: str, paused: bool) -> JobSchedule:
        return JobSchedule(
            quartz_cron_expression=cron, timezone_id=timezone, pause_status="PAUSED" if paused else "UNPAUSED"
        )

    def _job(
        self, key: str, parameters: dict[str, str], libraries: tuple[str, ...], timeout_minutes: int, *,
        cluster: JobJobCluster | None = None, schedule: JobSchedule | None = None,
    ) -> Job:
        cluster = cluster or self._cluster()
        emails = list(self._env.alerts.emails)
        job = Job(
            self,
            f"{key}_job",
            name=f"churn-{key}",
            job_cluster=[cluster],
            task=[
                JobTask(
                    task_key=key,
                    job_cluster_key=cluster.job_cluster_key,
                    notebook_task=JobTaskNotebookTask(
                        notebook_path=self.notebooks[f"{key}_churn"].path, base_parameters=parameters,
                        source="WORKSPACE",
                    ),
                    library=[JobTaskLibrary(pypi=JobTaskLibraryPypi(package=self._pinned(name))) for name in libraries],
                )
            ],
            run_as=JobRunAs(service_principal_name=self.automation_id),
            timeout_seconds=timeout_minutes * 60,
            # One run at a time: two runs of a build would race for its runs/<build>/ audit files and MLflow
            # tags (train), for the same endpoint's traffic (deploy), or for one scoring date's partition
            # (score). A second trigger waits in the queue instead of being skipped.
            max_concurrent_runs=1,
            queue=JobQueue(enabled=True),
            schedule=schedule,
            # The alert receivers hear of every failed run (config [alerts] emails).
            email_notifications=JobEmailNotifications(on_failure=emails) if emails else None,
            tags=self._env.tags,
        )
        Permissions(
            self, f"{key}_job_access", job_id=job.id,
            access_control=[
                PermissionsAccessControl(service_principal_name=self.automation_id, permission_level="CAN_MANAGE_RUN")
            ],
        )
        return job


def project_files(source_root: Path) -> list[str]:
    """The project code the notebooks import, as sorted POSIX paths relative to `source_root`."""
    found = {
        path.relative_to(source_root).as_posix()
        for package in PROJECT_PACKAGES
        for path in (source_root / package).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    return sorted(found | set(PROJECT_DATA_FILES))


def locked_versions(source_root: Path) -> dict[str, str]:
    """Package name -> version specifier (e.g. '==1.60.0') from Pipfile.lock, so jobs install what tests ran with."""
    lock_path = source_root / "Pipfile.lock"
    try:
        lock = json.loads(lock_path.read_text())
    except FileNotFoundError:
        raise MissingSource(f"{lock_path} not found; expected the committed Pipfile.lock") from None
    return {name: spec.get("version", "") for name, spec in lock.get("default", {}).items()}
