"""The MLflow side of a release: find a build's run, register (or reuse) its model version, and its tags.

MLflow is the registry everywhere (the local SQLite store, or the Azure ML workspace through
azureml-mlflow), so this module is the same for every environment. Call
`deploy.platform.tracking.use_environment` first. It only uses what Azure ML's MLflow support
tables document: tag filters in run searches (never `attributes.status`), name-only model-version
searches, and model-version tags. Aliases and registered-model tags are not on that list, so they
are never the truth: which version a slot serves is what its serving target says. Everything a
release decides is recorded as tags on the model version, so the registry is the audit trail:

    buildnumber, buildsource, run_id   where the version comes from
    gate.<slot>                        passed | failed | overridden, with gate.<slot>.detail (JSON)
    forced.<slot>                      the overrides --force used, e.g. "gate,stage-validation"
    validation.<slot>                  the last smoke validation of this version in that slot (JSON)
    validated.<slot>                   "true" once it served the slot after passing validation,
                                       "rolled-back" once a rollback took it out of the slot

The slot's latest validation (which `status` shows) is the newest `validation.<slot>` over all versions.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy.core.build_id import LATEST, check_release_build
from deploy.core.contract import EXPERIMENT, MODEL_ARTIFACT_PATH, REGISTERED_MODEL, TAG_BUILD, TAG_SOURCE
from deploy.core.errors import Refused, UsageError
from deploy.core.report import progress
from deploy.platform import tracking

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.pyfunc import PyFuncModel
    from mlflow.tracking import MlflowClient

TAG_RUN_ID = "run_id"
FINISHED = "FINISHED"
# How many of the newest runs `latest` looks through for a finished one.
LATEST_SEARCH_DEPTH = 100


def client() -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def find_run(build: str | None) -> Run:
    """The finished run of `build` in experiment automl-churn; `latest` or None: the newest finished run.

    Only tags go into the server-side filter; the run status is checked here (Azure ML does not
    support `attributes.status` in a filter)."""
    check_release_build(build)
    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        raise UsageError(f"experiment '{EXPERIMENT}' does not exist; train a build first (python -m deploy train)")
    if build in (None, LATEST):
        newest = mlflow_client.search_runs(
            [experiment.experiment_id], order_by=["start_time DESC"], max_results=LATEST_SEARCH_DEPTH,
        )
        finished = [run for run in newest if run.info.status == FINISHED and run.data.tags.get(TAG_BUILD)]
        if not finished:
            raise UsageError(f"experiment '{EXPERIMENT}' has no finished run; train a build first")
        return finished[0]
    finished = finished_runs(build)
    where = f"in experiment '{EXPERIMENT}' with tag {TAG_BUILD}={build}"
    if not finished:
        raise UsageError(f"no finished run {where}; expected exactly one (python -m deploy train --build {build})")
    if len(finished) > 1:
        ids = ", ".join(run.info.run_id for run in finished)
        raise UsageError(
            f"{len(finished)} finished runs {where} ({ids}); expected exactly one "
            f"(python -m deploy train --build {build} --force retrains it and keeps only the new run)"
        )
    return finished[0]


def finished_runs(build: str) -> list[Run]:
    """The build's finished runs in experiment automl-churn, newest first (none if there is no experiment)."""
    experiment = client().get_experiment_by_name(EXPERIMENT)
    return [] if experiment is None else tracking.finished_runs(experiment.experiment_id, build)


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

    local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    check_requirements(uri, Path(local) / "requirements.txt")
    # MLflow's own check (suppressed) would only warn, and costs 1.3 s; check_requirements refuses instead.
    return mlflow.pyfunc.load_model(local, suppress_warnings=True)


def check_requirements(uri: str, requirements_file: Path) -> None:
    """Refuse a model whose pinned requirements differ from this machine's in major or minor version.

    The gate and the smoke validation judge the model with what is installed here; a model pickled or
    serialized by another scikit-learn (or numpy, pandas...) minor can load and predict differently."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        lines = requirements_file.read_text().splitlines()
    except FileNotFoundError:
        return  # a model without a requirements file pins nothing to compare
    differing = []
    for line in lines:
        name, _, pinned = line.split(";")[0].strip().partition("==")
        if not pinned or name.startswith(("-", "#")):
            continue
        try:
            here = installed_version(name.strip())
        except PackageNotFoundError:
            differing.append(f"{name.strip()} {pinned.strip()} (not installed here)")
            continue
        if _major_minor(here) != _major_minor(pinned.strip()):
            differing.append(f"{name.strip()} {pinned.strip()} (here {here})")
    if differing:
        raise Refused(
            f"model {uri} was built with {', '.join(differing)}; a different major or minor version may load it "
            "wrongly, so it is not judged here: release from an environment installed from Pipfile.lock "
            "(make install), or retrain the build with the locked versions"
        )


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split("+")[0].split(".")[:2])


def model_uri(version: str) -> str:
    return f"models:/{REGISTERED_MODEL}/{version}"


def run_of(version: str) -> Run:
    """The training run a model version was registered from."""
    mlflow_client = client()
    return mlflow_client.get_run(mlflow_client.get_model_version(REGISTERED_MODEL, version).run_id)


def version_tags(version: str) -> dict[str, str]:
    return dict(client().get_model_version(REGISTERED_MODEL, version).tags)


def tag_version(version: str, tags: dict[str, Any]) -> None:
    mlflow_client = client()
    for key, value in tags.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        mlflow_client.set_model_version_tag(REGISTERED_MODEL, version, key, text)


def try_set_alias(alias: str, version: str) -> bool:
    """Point `alias` at `version` where the registry supports aliases (a convenience for people browsing
    the registry; nothing here reads them). Never fails: Azure ML's MLflow registry has no aliases, and a
    refusal here comes after traffic has moved."""
    from mlflow.exceptions import MlflowException

    try:
        client().set_registered_model_alias(REGISTERED_MODEL, alias, version)
    except MlflowException as exc:
        progress(f"  (no alias {alias} in this registry: {exc.error_code}; the slot's deployment is the record)")
        return False
    return True


def versions() -> list[Any]:
    """Every version of the registered model, with its tags (a name-only search, as Azure ML documents)."""
    return list(client().search_model_versions(f"name = '{REGISTERED_MODEL}'"))


def last_validation(slot: str) -> dict[str, Any] | None:
    """The newest smoke validation of any version in `slot`, read from the versions' `validation.<slot>` tags."""
    from mlflow.exceptions import MlflowException

    try:
        found = versions()
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    results = []
    for version in found:
        text = (version.tags or {}).get(f"validation.{slot}")
        if text:
            results.append(json.loads(text))
    return max(results, key=lambda result: result.get("at", ""), default=None)
