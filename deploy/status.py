"""`python -m deploy status`: the slots of an environment (and, on Azure, the automation secret)."""

from __future__ import annotations

import argparse
from typing import Any

from config import EnvConfig
from deploy.core.errors import OK, REFUSED
from deploy.core.report import emit_json


def run(args: argparse.Namespace, env: EnvConfig) -> int:
    document = collect(env, args.outputs)
    if args.json:
        emit_json(document)
    else:
        print(render(document))
    # A slot that should serve and does not answer (or cannot be read) is a failure a pipeline must see.
    return OK if document["healthy"] else REFUSED


def collect(env: EnvConfig, outputs: Any = None, target: Any = None) -> dict[str, Any]:
    """The slots (release), each slot's latest monitoring verdict (monitoring), the latest scoring run
    (scoring) and, on Azure, the automation secret (identity)."""
    from deploy.monitoring.run import latest_verdict
    from deploy.platform.outputs import resolve_outputs
    from deploy.release.slot_status import status
    from deploy.scoring import latest_run

    stack = resolve_outputs(env, outputs)
    document = status(env, outputs=stack, target=target)
    for slot, info in document["slots"].items():
        info["monitoring"] = latest_verdict(slot)  # the newest `monitor` run of the slot, or None
    document["scoring"] = latest_run(env)  # the latest batch-scoring run (MLflow already points at env)
    if not env.is_local:
        from deploy.identity.rotation import secret_status

        document["secret"] = secret_status(env, stack)
    return document


def render(document: dict[str, Any]) -> str:
    lines = [f"environment {document['environment']}"]
    for slot, info in document["slots"].items():
        lines.append(f"{slot}: {info['endpoint']} ({info['state']})")
        if info.get("error"):
            lines.append(f"  error:      {info['error']}")
            continue
        lines.append(f"  url:        {info['url'] or '-'}")
        lines.append(f"  answers:    {_probe(info['probe'])}")
        lines.append(f"  serving:    {_version(info['serving'])}")
        lines.append(f"  previous:   {_version(info['previous'])}")
        traffic = ", ".join(f"{name} {share}%" for name, share in sorted(info["traffic"].items())) or "-"
        lines.append(f"  traffic:    {traffic}")
        lines.append(f"  validation: {_validation(info['last_validation'])}")
        watched = info.get("monitoring")
        lines.append("  monitoring: " + ("-" if not watched else f"{watched['verdict']} ({watched['crossed']}) for "
                                         f"version {watched['version']} over {watched['window']} at {watched['at']}"))
    lines.append(f"scoring: {_scoring(document.get('scoring'))}")
    if "secret" in document:
        lines.append("secret:")
        lines.extend(f"  {key}: {value}" for key, value in sorted(document["secret"].items()))
    return "\n".join(lines)


def _probe(probe: dict[str, Any] | None) -> str:
    if probe is None:
        return "- (nothing serves)"
    if probe["answered"]:
        return f"yes ({probe['latency_ms']:.0f} ms through the url)"
    return f"NO: {probe['error']}"


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
