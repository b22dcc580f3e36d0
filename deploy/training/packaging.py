"""How a fitted churn pipeline becomes an MLflow model, the same way on Databricks and everywhere else.

The serialization is chosen here, not by MLflow's defaults (which pickle scikit-learn models
with cloudpickle on a Databricks runtime and use skops elsewhere):

- the fitted pipeline is written with **skops**, and every type skops does not trust by default
  must be in the reviewed list (`model.SKOPS_TRUSTED_TYPES`), or saving stops;
- the MLflow model is a **pyfunc "model from code"** (`served_model.py`, copied into the model),
  so loading it runs that file instead of unpickling anything;
- the model's config records the decision threshold and the trusted types, its metadata the
  serialization, and its requirements pin the libraries that trained it.

The model is logged as the run's `model` artifacts, not with `log_model`: in MLflow 3 that creates
a "logged model" through /api/2.0/mlflow/logged-models, which the Azure ML tracking server does not
implement (404). Run artifacts work in every store, and `runs:/<run id>/model` registers and loads
the same.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from deploy.core.contract import DECISION, FEATURES, MODEL_ARTIFACT_PATH, PROBABILITY

SERVED_MODEL_CODE = Path(__file__).with_name("served_model.py")
PIPELINE_FILE = "pipeline.skops"
SERIALIZATION = "skops"
# The packages that load and serve the model (skops reads the pipeline; scipy is scikit-learn's).
REQUIRED_PACKAGES = ("mlflow", "scikit-learn", "skops", "pandas", "numpy", "scipy")


class UntrustedModelTypes(ValueError):
    """The fitted pipeline holds a type skops does not trust and nobody reviewed."""


def log_model(fitted: Any, features: pd.DataFrame, threshold: float, trusted_types: Sequence[str] = ()) -> None:
    """Save `fitted` as the churn pyfunc model and log it as the active run's `model` artifacts."""
    import mlflow

    with tempfile.TemporaryDirectory() as folder:
        saved = Path(folder) / MODEL_ARTIFACT_PATH
        save_model(fitted, features, threshold, saved, trusted_types)
        mlflow.log_artifacts(str(saved), artifact_path=MODEL_ARTIFACT_PATH)


def save_model(
    fitted: Any, features: pd.DataFrame, threshold: float, path: Path, trusted_types: Sequence[str] = ()
) -> None:
    """Write the MLflow model for `fitted` (a scikit-learn classifier of 0/1) to the folder `path`."""
    import mlflow
    import skops.io
    from mlflow.models import infer_signature

    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"the decision threshold must be in [0, 1], not {threshold}")
    inputs = features[list(FEATURES)]
    with tempfile.TemporaryDirectory() as scratch:
        pipeline_file = Path(scratch) / PIPELINE_FILE
        skops.io.dump(fitted, pipeline_file)
        unreviewed = sorted(set(skops.io.get_untrusted_types(file=pipeline_file)) - set(trusted_types))
        if unreviewed:
            raise UntrustedModelTypes(
                f"the fitted model holds types skops does not trust: {', '.join(unreviewed)}; "
                "review them and add them to deploy.training.model.SKOPS_TRUSTED_TYPES"
            )
        config = {"threshold": float(threshold), "skops_trusted_types": sorted(trusted_types)}
        example_output = _contract_output(fitted, inputs, threshold)
        with warnings.catch_warnings():
            # The integer columns (Age, Tenure, ...) are integers in the table and in every request; MLflow's
            # hint that integers cannot be missing changes nothing here, and a double schema would refuse them.
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
            signature = infer_signature(inputs, example_output)
        mlflow.pyfunc.save_model(
            path,
            python_model=str(SERVED_MODEL_CODE),
            artifacts={"pipeline": str(pipeline_file)},
            model_config=config,
            signature=signature,
            input_example=inputs.head(5),
            # Explicit: inferring them runs a subprocess that costs ~7 s.
            pip_requirements=model_requirements(),
            metadata=serialization_metadata(trusted_types),
        )


def serialization_metadata(trusted_types: Sequence[str]) -> dict[str, Any]:
    """What the MLmodel file records about how the pipeline is stored."""
    from importlib.metadata import version

    return {
        "serialization": SERIALIZATION,
        "serialization_version": version("skops"),
        "pipeline_artifact": f"artifacts/{PIPELINE_FILE}",
        "skops_trusted_types": sorted(trusted_types),
        "loader": "models-from-code",
    }


def model_requirements() -> list[str]:
    """The packages that load and serve the model, pinned to the versions that trained it."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in REQUIRED_PACKAGES]


def _contract_output(fitted: Any, inputs: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """What the served model answers for `inputs` (for the signature): the probability and the decision."""
    import numpy as np

    positive = list(fitted.classes_).index(1)
    probability = fitted.predict_proba(inputs)[:, positive].astype(np.float64)
    return pd.DataFrame({PROBABILITY: probability, DECISION: (probability >= threshold).astype(np.int32)})
