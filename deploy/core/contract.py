"""Names shared by training, the notebooks and the rollout: change one here and all follow."""

from __future__ import annotations

EXPERIMENT = "automl-churn"
TAG_BUILD = "buildnumber"
TAG_SOURCE = "buildsource"
MANUAL_SOURCE = "manual"  # the source recorded when a notebook is run by hand with empty widgets

REGISTERED_MODEL = "churn-model"
MODEL_ARTIFACT_PATH = "model"
# The scoring contract, online and in batch: per customer, the churn probability (a float in [0, 1])
# and the decision at the model's threshold (0 or 1).
PROBABILITY = "churn_probability"
DECISION = "churn"
SCORING_EXPERIMENT = "churn-scoring"

LABEL = "Exited"
ID_COLUMNS = ("RowNumber", "CustomerId", "Surname")
CATEGORICAL_FEATURES = ("Geography", "Gender")
NUMERIC_FEATURES = (
    "CreditScore", "Age", "Tenure", "Balance", "NumOfProducts", "HasCrCard", "IsActiveMember", "EstimatedSalary",
)
FEATURES = CATEGORICAL_FEATURES + NUMERIC_FEATURES
# The column order of Churn_Modelling.csv, the hackathon guide's public table.
COLUMNS = (
    "RowNumber", "CustomerId", "Surname", "CreditScore", "Geography", "Gender", "Age", "Tenure", "Balance",
    "NumOfProducts", "HasCrCard", "IsActiveMember", "EstimatedSalary", "Exited",
)

# One typical customer: what `status` sends through each slot's public URL to see that it answers.
PROBE_CUSTOMER = {
    "Geography": "France", "Gender": "Female", "CreditScore": 650, "Age": 42, "Tenure": 5, "Balance": 0.0,
    "NumOfProducts": 2, "HasCrCard": 1, "IsActiveMember": 1, "EstimatedSalary": 100_000.0,
}

DATA_CONTAINER = "churndata"
SOURCE_DATA_PATH = "Churn_Modelling.csv"  # the table inside the container
SCORES_PATH = "scores"  # the batch scores inside the container: one partition per scoring date
ID_COLUMN = "CustomerId"  # what a score is keyed by


def audit_path(build: str, split: str) -> str:
    """Where a build's train or test split lives, relative to the data container (the audit trail)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, not {split!r}")
    return f"runs/{build}/{split}.csv"
