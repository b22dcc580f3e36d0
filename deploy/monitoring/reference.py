"""The reference a slot is judged against: the training split of the model version it serves.

Which version a slot serves is what its serving target says (the deployment holding the traffic), as
for a release; the version's build comes from its registry tags, and the build's audit trail holds
the split it was trained on (`runs/<build>/train.csv` in the data container). The reference
probabilities are that same model's answers on its training split, so prediction drift compares
like with like.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from config import EnvConfig
from deploy.core.contract import FEATURES, PROBABILITY, TAG_BUILD, audit_path
from deploy.core.errors import Refused
from deploy.platform import storage

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from deploy.release.targets.base import Target



@dataclass(frozen=True)
class Reference:
    slot: str
    endpoint: str
    deployment: str
    version: str
    build: str
    train_location: str
    train: pd.DataFrame

    def probabilities(self) -> np.ndarray | None:
        """The served model's churn probabilities on its training split (None: it answers labels only).
        Loads the model: seconds, so the monitor asks only when current probabilities need comparing."""
        from deploy.release import registry

        return model_probabilities(registry.load_model(registry.model_uri(self.version)), self.train)


def load_reference(
    env: EnvConfig, slot: str, target: Target, root: str, credential: TokenCredential | None = None,
) -> Reference:
    """The slot's serving version, its build and its training split."""
    from deploy.release import registry

    endpoint = target.describe(slot)
    serving = endpoint.serving if endpoint is not None else None
    if serving is None or not serving.version:
        raise Refused(
            f"slot {slot} ({env.endpoint_name(slot)}) serves no model version; nothing to monitor "
            f"(release a build with python -m deploy release --env {env.name} --to {slot})"
        )
    version = serving.version
    build = registry.version_tags(version).get(TAG_BUILD, "")
    if not build:
        raise Refused(f"model version {version} has no {TAG_BUILD} tag; its training split cannot be found")
    location = storage.join(root, audit_path(build, "train"))
    try:
        train = pd.read_csv(io.StringIO(storage.read_text(location, credential)))
    except FileNotFoundError:
        raise Refused(
            f"the training split of build {build} (model version {version}) is missing at {location}; "
            "the reference cannot be built"
        ) from None
    missing = [name for name in FEATURES if name not in train.columns]
    if missing:
        raise Refused(f"the training split {location} lacks feature {missing[0]}; expected the model's features")
    return Reference(slot, endpoint.name, serving.name, version, build, location, train)


def model_probabilities(model: Any, rows: pd.DataFrame) -> np.ndarray | None:
    """The model's churn probabilities for `rows`, or None for a model that answers labels only."""
    answer = model.predict(rows[list(FEATURES)])
    if isinstance(answer, pd.DataFrame) and PROBABILITY in answer.columns:
        return answer[PROBABILITY].to_numpy(dtype=float)
    return None
