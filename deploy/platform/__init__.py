"""Reaching an environment: Entra ID credentials, the stack outputs, MLflow's location, the churn data
container, and the Databricks jobs API. Every concern above (training, release, identity) stands on it."""
