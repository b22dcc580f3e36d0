"""The churn model as MLflow loads it: a "models from code" file, copied into every logged model.

MLflow runs this file when it loads the model (`mlflow.pyfunc.load_model`, `spark_udf`, the
scoring server, an Azure ML no-code deployment); nothing is unpickled. The fitted scikit-learn
pipeline is a skops file among the model's artifacts, loaded with only the types the model's
config lists as trusted (reviewed in `deploy.training.model`). The model's config also holds the
decision threshold training chose.

For each customer, `predict` answers the scoring contract's two columns:
`churn_probability` (float in [0, 1]) and `churn` (1 when the probability reaches the threshold).

This file imports nothing from the project: the model must load where only its recorded
requirements are installed.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

PIPELINE_ARTIFACT = "pipeline"
PROBABILITY = "churn_probability"
DECISION = "churn"


class ChurnModel(PythonModel):
    def load_context(self, context: Any) -> None:
        import skops.io

        config = context.model_config or {}
        self.threshold = float(config["threshold"])
        trusted = list(config.get("skops_trusted_types", []))
        self.pipeline = skops.io.load(context.artifacts[PIPELINE_ARTIFACT], trusted=trusted)
        self.positive = list(self.pipeline.classes_).index(1)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        probability = self.pipeline.predict_proba(model_input)[:, self.positive].astype(np.float64)
        return pd.DataFrame(
            {PROBABILITY: probability, DECISION: (probability >= self.threshold).astype(np.int32)},
            index=model_input.index,
        )


mlflow.models.set_model(ChurnModel())
