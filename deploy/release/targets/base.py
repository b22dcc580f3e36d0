"""The serving target interface shared by the local servers and Azure ML managed online endpoints.

A slot (`stage`, `prod`) is one endpoint with a stable URL. Blue/green happens inside it: each
model version gets its own deployment, named from the version, so a re-run finds the deployment
an interrupted release left behind instead of adding a second one. The endpoint remembers which
deployment served before the current one; that is the rollback target.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

# Provisioning states, in Azure ML's words; the local target uses the same ones.
SUCCEEDED = "Succeeded"
STOPPED = "Stopped"  # local only: the deployment's server is not running
ABSENT = "Absent"  # the endpoint does not exist yet


def deployment_name(version: str) -> str:
    """One deployment per model version (Azure: 3-32 characters, letter first, letters/digits/hyphens)."""
    return f"churn-v{version}"


@dataclass(frozen=True)
class DeploymentInfo:
    name: str
    version: str | None
    traffic: int
    state: str

    @property
    def healthy(self) -> bool:
        return self.state == SUCCEEDED


@dataclass(frozen=True)
class EndpointInfo:
    name: str
    url: str | None
    state: str
    deployments: tuple[DeploymentInfo, ...]
    previous: str | None  # the deployment kept for rollback

    @property
    def serving(self) -> DeploymentInfo | None:
        """The deployment taking the traffic (the largest share; blue/green gives it all of it)."""
        live = [deployment for deployment in self.deployments if deployment.traffic > 0]
        return max(live, key=lambda deployment: deployment.traffic) if live else None

    @property
    def traffic(self) -> dict[str, int]:
        return {deployment.name: deployment.traffic for deployment in self.deployments}

    def deployment(self, name: str | None) -> DeploymentInfo | None:
        return next((deployment for deployment in self.deployments if deployment.name == name), None)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Target(ABC):
    """What the rollout needs from a place that serves models. Every call is idempotent."""

    @abstractmethod
    def describe(self, slot: str) -> EndpointInfo | None:
        """The slot's endpoint and deployments, or None when the endpoint does not exist."""

    @abstractmethod
    def ensure_endpoint(self, slot: str) -> EndpointInfo:
        """Create the slot's endpoint if missing (serving nothing yet); return it."""

    @abstractmethod
    def create_deployment(self, slot: str, name: str, version: str) -> DeploymentInfo:
        """Serve `version` as deployment `name` with zero traffic, reusing a healthy one of that name."""

    @abstractmethod
    def invoke_deployment(self, slot: str, name: str, rows: pd.DataFrame) -> list[Any]:
        """Score `rows` on deployment `name` directly, whatever the traffic split; return its predictions."""

    @abstractmethod
    def invoke_slot(self, slot: str, rows: pd.DataFrame) -> list[Any]:
        """Score `rows` through the slot's public URL, as a caller would (whichever deployment holds the traffic)."""

    @abstractmethod
    def switch_traffic(self, slot: str, to: str, previous: str | None) -> None:
        """Send 100% of the slot's traffic to `to`, and remember `previous` as the rollback target."""

    @abstractmethod
    def delete_deployment(self, slot: str, name: str) -> None:
        """Remove deployment `name` (it must take no traffic). Missing is fine."""
