"""Training the churn model: input checks, synthetic data, the model and its search, and logging the build's run.

`train_build` is the one entry point (the local CLI and the Databricks notebook both call it).
It is imported lazily so that `deploy.training.schema` and friends stay cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deploy.training.build import TrainResult, train_build

__all__ = ["TrainResult", "train_build"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from deploy.training import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
