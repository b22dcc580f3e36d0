"""The MLflow side of a release: find a build's run, register (or reuse) its model version, tags, aliases.

MLflow is the registry everywhere (the local SQLite store, or the Azure ML workspace through
azureml-mlflow), so this module is the same for every environment. Call
`deploy.platform.tracking.use_environment` first. Everything a release decides is recorded as tags on
the model version, so the registry is the audit trail:

    buildnumber, buildsource, run_id   where the version comes from
    gate.<slot>                        passed | failed | overridden, with gate.<slot>.detail (JSON)
    forced.<slot>                      the overrides --force used, e.g. "gate,stage-validation"
    validation.<slot>                  the last smoke validation of this version in that slot (JSON)
    validated.<slot>                   "true" once it served the slot after passing validation

and the registered model carries `last_validation.<slot>` (JSON: the slot's latest validation of
any version), which `status` shows.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

from deploy.core.build_id import BUILD_ID, BUILD_ID_EXPECTED
from deploy.core.contract import EXPERIMENT, MODEL_ARTIFACT_PATH, REGISTERED_MODEL, TAG_BUILD, TAG_SOURCE
from deploy.core.errors import UsageError

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.pyfunc import PyFuncModel
    from mlflow.tracking import MlflowClient

TAG_RUN_ID = "run_id"
LATEST = "latest"


def client() -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def find_run(build: str | None) -> Run:
    """The finished run of `build` in experiment automl-churn; `latest` or None: the newest finished run."""
    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        raise UsageError(f"experiment '{EXPERIMENT}' does not exist; train a build first (python -m deploy train)")
    if build in (None, "", LATEST):
        runs = mlflow_client.search_runs(
            [experiment.experiment_id], "attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"], max_results=1,
        )
        if not runs:
            raise UsageError(f"experiment '{EXPERIMENT}' has no finished run; train a build first")
        return runs[0]
    if not BUILD_ID.fullmatch(build):  # it goes into a search filter: the same rule training applied
        raise UsageError(f"build '{build}' is not a build number; expected {BUILD_ID_EXPECTED}")
    runs = mlflow_client.search_runs([experiment.experiment_id], f"tags.{TAG_BUILD} = '{build}'")
    finished = [run for run in runs if run.info.status == "FINISHED"]
    where = f"in experiment '{EXPERIMENT}' with tag {TAG_BUILD}={build}"
    if not finished:
        unfinished = f" ({len(runs)} not finished)" if runs else ""
        raise UsageError(f"no finished run {where}{unfinished}; expected exactly one")
    if len(finished) > 1:
        ids = ", ".join(run.info.run_id for run in finished)
        raise UsageError(f"{len(finished)} finished runs {where} ({ids}); expected exactly one")
    return finished[0]


def register(run: Run) -> str:
    """The model version of `run`'s model: the one it already registered, or a new one. Tagged with its origin."""
    import mlflow

    run_id = run.info.run_id
    # Filtered by name only, the filter Azure ML's MLflow registry documents; the run is matched here.
    existing = [
        version for version in client().search_model_versions(f"name = '{REGISTERED_MODEL}'")
        if version.run_id == run_id
    ]
    if existing:
        version = str(min(int(found.version) for found in existing))
    else:
        version = str(mlflow.register_model(f"runs:/{run_id}/{MODEL_ARTIFACT_PATH}", REGISTERED_MODEL).version)
    tag_version(version, {
        TAG_BUILD: run.data.tags.get(TAG_BUILD, ""),
        TAG_SOURCE: run.data.tags.get(TAG_SOURCE, ""),
        TAG_RUN_ID: run_id,
    })
    return version


def load_model(uri: str) -> PyFuncModel:
    """The pyfunc model at `uri` in the current registry, loaded once (a registered version never changes)."""
    import mlflow

    return _load_model(mlflow.get_registry_uri(), uri)


@functools.lru_cache(maxsize=4)
def _load_model(registry_uri: str, uri: str) -> PyFuncModel:
    import mlflow

    # No check of the model's requirements against this environment (1.3 s): the release runs here,
    # the model serves elsewhere, and the scoring server makes that check where it matters.
    return mlflow.pyfunc.load_model(uri, suppress_warnings=True)


def model_uri(version: str) -> str:
    return f"models:/{REGISTERED_MODEL}/{version}"


def version_tags(version: str) -> dict[str, str]:
    return dict(client().get_model_version(REGISTERED_MODEL, version).tags)


def tag_version(version: str, tags: dict[str, Any]) -> None:
    mlflow_client = client()
    for key, value in tags.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        mlflow_client.set_model_version_tag(REGISTERED_MODEL, version, key, text)


def alias_version(alias: str) -> str | None:
    """The version `alias` points at, or None (no such alias, or no registered model yet)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client().get_model_version_by_alias(REGISTERED_MODEL, alias).version)
    except MlflowException:
        return None


def set_alias(alias: str, version: str) -> None:
    client().set_registered_model_alias(REGISTERED_MODEL, alias, version)


def record_last_validation(slot: str, summary: dict[str, Any]) -> None:
    client().set_registered_model_tag(REGISTERED_MODEL, f"last_validation.{slot}", json.dumps(summary, sort_keys=True))


def last_validation(slot: str) -> dict[str, Any] | None:
    from mlflow.exceptions import MlflowException

    try:
        tags = client().get_registered_model(REGISTERED_MODEL).tags
    except MlflowException:
        return None
    text = tags.get(f"last_validation.{slot}")
    return json.loads(text) if text else None
