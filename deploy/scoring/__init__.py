"""Batch scoring of the customer base on Spark: the same code on Databricks and in local mode.

`score_customers` is the one entry point (the `score_churn` notebook calls it through the notebook
runtime, locally and on Databricks); `latest_run` is what `status` shows. `deploy.scoring.request`
checks a request's flags and imports nothing heavy, so the CLI can use it before paying for Spark.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deploy.scoring.batch import ScoreResult, score_customers
    from deploy.scoring.lineage import latest_run

__all__ = ["ScoreResult", "latest_run", "score_customers"]
_HOMES = {"ScoreResult": "batch", "score_customers": "batch", "latest_run": "lineage"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"deploy.scoring.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
