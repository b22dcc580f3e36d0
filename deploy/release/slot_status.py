"""What each slot serves, read from its serving target and proven by one request through its public URL.

`status` never changes a slot, so it takes no lock; `deploy.status` adds the automation secret, the
latest scoring and monitoring runs on top.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from config import EnvConfig
from config.naming import SLOTS
from deploy.core.contract import PROBE_CUSTOMER, TAG_BUILD
from deploy.core.errors import DeployError
from deploy.platform import tracking
from deploy.platform.outputs import Outputs, resolve_outputs
from deploy.release import registry, targets
from deploy.release.targets.base import ABSENT, DeploymentInfo, Target

UNREACHABLE = "Unreachable"  # the slot has a serving deployment, but its public URL did not answer
UNREADABLE = "Unreadable"  # the slot's record could not be read (locally: a damaged state file)


def status(env: EnvConfig, outputs: Outputs = None, target: Target | None = None) -> dict[str, Any]:
    """Each slot: endpoint URL, serving version and build, traffic, state, a probe through its public URL,
    and its last validation. (`deploy.status` adds the automation secret's state for Azure environments.)

    `healthy` is False for a slot that should serve (a deployment holds its traffic) but does not
    answer, or whose record cannot be read; `status` then exits 1."""
    stack = resolve_outputs(env, outputs)
    tracking.use_environment(env, stack)
    target = target or targets.for_environment(env, stack)
    slots = {slot: _slot_status(env, slot, target) for slot in SLOTS}
    return {"environment": env.name, "healthy": all(slot["healthy"] for slot in slots.values()), "slots": slots}


def _slot_status(env: EnvConfig, slot: str, target: Target) -> dict[str, Any]:
    document: dict[str, Any] = {
        "endpoint": env.endpoint_name(slot), "url": None, "state": ABSENT, "traffic": {}, "serving": None,
        "previous": None, "deployments": [], "probe": None, "healthy": True,
    }
    try:
        endpoint = target.describe(slot)
    except DeployError as exc:  # e.g. a damaged local state file: report it, and still report the other slot
        return {**document, "state": UNREADABLE, "error": str(exc), "healthy": False}
    if endpoint is not None:
        document.update(
            endpoint=endpoint.name, url=endpoint.url, state=endpoint.state, traffic=endpoint.traffic,
            serving=version_status(endpoint.serving), previous=version_status(endpoint.deployment(endpoint.previous)),
            deployments=[asdict(deployment) for deployment in endpoint.deployments],
        )
        if endpoint.serving is not None:
            document["probe"] = _probe(target, slot)
            if not document["probe"]["answered"]:
                document.update(state=UNREACHABLE, healthy=False)
    document["last_validation"] = registry.last_validation(slot)
    return document


def _probe(target: Target, slot: str) -> dict[str, Any]:
    """One request through the slot's public URL, as a caller would send it."""
    import pandas as pd

    started = time.perf_counter()
    try:
        answers = target.invoke_slot(slot, pd.DataFrame([PROBE_CUSTOMER]))
    except Exception as exc:  # whatever went wrong, the slot did not answer
        return {"answered": False, "error": f"{type(exc).__name__}: {str(exc).strip()[:200]}", "latency_ms": None}
    latency = round((time.perf_counter() - started) * 1000, 1)
    if len(answers) != 1:
        return {"answered": False, "error": f"{len(answers)} predictions for 1 row", "latency_ms": latency}
    return {"answered": True, "error": None, "latency_ms": latency}


def version_status(deployment: DeploymentInfo | None) -> dict[str, Any] | None:
    """A deployment's name, version, the version's build and its state (None for no deployment)."""
    if deployment is None:
        return None
    build = registry.version_tags(deployment.version).get(TAG_BUILD) if deployment.version else None
    return {"deployment": deployment.name, "version": deployment.version, "build": build, "state": deployment.state}
