"""`python -m deploy status`: the slots of an environment (and, on Azure, the automation secret)."""

from __future__ import annotations

import argparse
from typing import Any

from config import EnvConfig
from deploy.core.errors import OK
from deploy.core.report import emit_json


def run(args: argparse.Namespace, env: EnvConfig) -> int:
    document = collect(env, args.outputs)
    if args.json:
        emit_json(document)
    else:
        print(render(document))
    return OK


def collect(env: EnvConfig, outputs: Any = None, target: Any = None) -> dict[str, Any]:
    """The slots (from the release side) and, on Azure, the automation secret (from the identity side)."""
    from deploy.release.rollout import resolve_outputs, status
    from deploy.scoring import latest_run

    stack = resolve_outputs(env, outputs)
    document = status(env, outputs=stack, target=target)
    document["scoring"] = latest_run(env)  # the latest batch-scoring run (MLflow already points at env)
    if not env.is_local:
        from deploy.identity.rotation import secret_status

        document["secret"] = secret_status(env, stack)
    return document


def render(document: dict[str, Any]) -> str:
    lines = [f"environment {document['environment']}"]
    for slot, info in document["slots"].items():
        lines.append(f"{slot}: {info['endpoint']} ({info['state']})")
        lines.append(f"  url:        {info['url'] or '-'}")
        lines.append(f"  serving:    {_version(info['serving'])}")
        lines.append(f"  previous:   {_version(info['previous'])}")
        traffic = ", ".join(f"{name} {share}%" for name, share in sorted(info["traffic"].items())) or "-"
        lines.append(f"  traffic:    {traffic}")
        lines.append(f"  alias:      {slot} -> version {info['alias_version'] or '-'}")
        lines.append(f"  validation: {_validation(info['last_validation'])}")
    lines.append(f"scoring: {_scoring(document.get('scoring'))}")
    if "secret" in document:
        lines.append("secret:")
        lines.extend(f"  {key}: {value}" for key, value in sorted(document["secret"].items()))
    return "\n".join(lines)


def _version(deployment: dict[str, Any] | None) -> str:
    if deployment is None:
        return "-"
    where = f"{deployment['deployment']}, {deployment['state']}"
    return f"version {deployment['version']} build {deployment['build']} ({where})"


def _validation(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    from deploy.release.smoke import summary

    verdict = "passed" if result["passed"] else "failed: " + "; ".join(result["reasons"])
    return f"version {result['version']} {verdict} ({summary(result)}) at {result['at']}"


def _scoring(run: dict[str, Any] | None) -> str:
    if run is None:
        return "-"
    via = f" (slot {run['slot']})" if run.get("slot") else ""
    return (f"{run['scoring_date']} with version {run['model_version']} build {run['build']}{via}: "
            f"{run['rows']} rows, {run['rows_unscored']} unscored, {run['status']} at {run['started']}, "
            f"in {run['output']}")
