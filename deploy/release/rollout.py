"""Release a build into a slot (stage or prod), roll a slot back, show the slots, stop local servers.

`release` reads top-down as the steps of the release:

1. find the build's finished run in experiment automl-churn;
2. register its model version (or reuse the one it already registered) and tag it with its origin;
3. the quality gate on the build's own test set (and, for prod, the stage-validation check);
4. blue/green: a deployment named after the version, beside the serving one, with zero traffic;
5. smoke validation of that deployment directly, against the offline predictions of the version;
6. traffic to it, the previous deployment kept for rollback, older ones deleted, the alias moved.

Until step 6 switches traffic, nothing the slot serves has changed: a refusal or a failure stops
the release there (a deployment it created is deleted). A re-run converges: the deployment name
comes from the version, so it finds what an interrupted run left, and a version the slot already
serves is reported as such. The Databricks deploy notebook calls `release` too.

Exit statuses: 0 done; 1 refused by the gate or the validation, or nothing to roll back to
(nothing changed); 2 bad input or configuration.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config import EnvConfig
from config.naming import SLOTS
from deploy.core.contract import REGISTERED_MODEL, TAG_BUILD, TAG_SOURCE
from deploy.core.errors import OK, Refused, UsageError
from deploy.core.report import emit_json, progress
from deploy.platform import tracking
from deploy.platform.outputs import StackOutputs, load_outputs
from deploy.release import gate, registry, smoke, targets
from deploy.release.targets.base import ABSENT, DeploymentInfo, EndpointInfo, Target, deployment_name

if TYPE_CHECKING:
    import pandas as pd

Outputs = StackOutputs | str | Path | None


@dataclass(frozen=True)
class ReleaseResult:
    environment: str
    slot: str
    endpoint: str
    url: str | None
    build: str
    source: str
    run_id: str
    version: str
    deployment: str
    previous: str | None  # the deployment kept for rollback
    already_serving: bool
    gate: dict[str, Any]
    validation: dict[str, Any] | None  # None when the slot already served this version
    overrides: tuple[str, ...]  # what --force overrode: gate, stage-validation

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RollbackResult:
    environment: str
    slot: str
    endpoint: str
    url: str | None
    deployment: str  # now serving
    version: str | None
    rolled_back_from: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def release(
    env: EnvConfig, slot: str, build: str | None = None, force: bool = False, outputs: Outputs = None,
    target: Target | None = None,
) -> ReleaseResult:
    """Release `build` (None or "latest": the newest finished run) into `slot`. Raises Refused or UsageError."""
    _check_slot(slot)
    stack = resolve_outputs(env, outputs)
    tracking.use_environment(env, stack)

    # 1. Find the run.
    run = registry.find_run(build)
    build_id = run.data.tags.get(TAG_BUILD, "")
    progress(f"release build {build_id} (run {run.info.run_id}) to {slot} in environment {env.name}")

    # 2. Register the model version, or reuse the one this run registered.
    version = registry.register(run)
    progress(f"  model {REGISTERED_MODEL} version {version}")

    # 3. Quality gate (and, for prod, stage validation first).
    test = gate.read_test_split(env, stack, run)
    verdict, overrides = _quality_gate(env, slot, version, build_id, test, force)

    # 4. Blue/green: the version's own deployment in the slot's endpoint (created if missing), beside
    #    the serving one. A slot that already serves this version is left as it is: a re-run converges.
    target = target or targets.for_environment(env, stack)
    endpoint = target.ensure_endpoint(slot)
    name = deployment_name(version)
    current = endpoint.serving
    previous = current.name if current is not None and current.name != name else endpoint.previous
    validation = None
    if current is not None and current.name == name and current.healthy:
        progress(f"  {endpoint.name} already serves version {version} ({name}); nothing to deploy")
    else:
        # 5. Zero traffic until its smoke validation passed; on any failure it is deleted again.
        keep = {previous, current.name if current else None}
        validation = _deploy_and_validate(env, target, slot, name, version, test, keep)
        # 6. Switch: all traffic to it, the previous deployment kept for rollback, older ones deleted.
        target.switch_traffic(slot, to=name, previous=previous)
        kept = f"; {previous} kept for rollback" if previous else ""
        progress(f"  {endpoint.name}: 100% of traffic to {name}{kept}")
    _delete_older(target, slot, keep={name, previous})
    registry.set_alias(slot, version)
    registry.tag_version(version, {f"validated.{slot}": "true"})
    progress(f"  alias {slot} -> version {version}")

    return ReleaseResult(
        environment=env.name, slot=slot, endpoint=endpoint.name, url=endpoint.url, build=build_id,
        source=run.data.tags.get(TAG_SOURCE, ""), run_id=run.info.run_id, version=version, deployment=name,
        previous=previous, already_serving=validation is None, gate=verdict.as_dict(),
        validation=None if validation is None else validation.as_dict(), overrides=overrides,
    )


def rollback(env: EnvConfig, slot: str, outputs: Outputs = None, target: Target | None = None) -> RollbackResult:
    """Move `slot`'s traffic and alias back to its previous deployment and delete the rolled-back one.

    Refused (exit 1), changing nothing, when the slot has no previous deployment, including right
    after a rollback."""
    _check_slot(slot)
    stack = resolve_outputs(env, outputs)
    target = target or targets.for_environment(env, stack)
    endpoint = target.describe(slot)
    current = endpoint.serving if endpoint else None
    previous = endpoint.deployment(endpoint.previous) if endpoint else None
    if endpoint is None or current is None or previous is None:
        serving = f"it serves {current.name}" if current else "it serves nothing"
        raise Refused(
            f"slot {slot} ({env.endpoint_name(slot)}) has no previous deployment to roll back to ({serving}); "
            "nothing changed"
        )
    tracking.use_environment(env, stack)
    if not previous.healthy:  # e.g. a local server that did not survive a reboot
        target.create_deployment(slot, previous.name, previous.version or "")
    # One way only: the rolled-back deployment is deleted and no rollback target remains, so a repeated
    # rollback (a retried step) is refused instead of bringing the bad version back. Roll forward with
    # `release`; the version also loses its validated.<slot> mark, so it cannot be promoted unforced.
    target.switch_traffic(slot, to=previous.name, previous=None)
    if previous.version:
        registry.set_alias(slot, previous.version)
    if current.version:
        registry.tag_version(current.version, {f"validated.{slot}": "rolled-back"})
    target.delete_deployment(slot, current.name)
    progress(f"rolled {endpoint.name} back from {current.name} to {previous.name} (version {previous.version}); "
             f"{current.name} deleted")
    return RollbackResult(
        environment=env.name, slot=slot, endpoint=endpoint.name, url=endpoint.url, deployment=previous.name,
        version=previous.version, rolled_back_from=current.name,
    )


def status(env: EnvConfig, outputs: Outputs = None, target: Target | None = None) -> dict[str, Any]:
    """Each slot: endpoint URL, serving version and build, traffic, provisioning state, last validation.
    (`deploy.status` adds the automation secret's state for Azure environments.)"""
    stack = resolve_outputs(env, outputs)
    tracking.use_environment(env, stack)
    target = target or targets.for_environment(env, stack)
    return {
        "environment": env.name,
        "slots": {slot: _slot_status(env, slot, target.describe(slot)) for slot in SLOTS},
    }


def down(env: EnvConfig) -> list[str]:
    """Stop the local routers and scoring servers; returns what was stopped."""
    if not env.is_local:
        raise UsageError(
            f"down stops local scoring servers; environment '{env.name}' is {env.kind}, expected a local one"
        )
    from deploy.release.targets.local import LocalTarget

    return LocalTarget(env).down()


def resolve_outputs(env: EnvConfig, outputs: Outputs) -> StackOutputs | None:
    """The stack outputs an Azure environment needs (given, or read from a file); None for local."""
    if env.is_local:
        return None
    return outputs if isinstance(outputs, StackOutputs) else load_outputs(env, outputs)


# --- the steps ------------------------------------------------------------------------------------


def _quality_gate(
    env: EnvConfig, slot: str, version: str, build: str, test: pd.DataFrame, force: bool
) -> tuple[gate.GateResult, tuple[str, ...]]:
    prod_version = registry.alias_version("prod")
    compare_with = registry.model_uri(prod_version) if prod_version and prod_version != version else None
    verdict = gate.evaluate(registry.model_uri(version), test, env.gate, prod_version, compare_with)
    overrides = []
    if not verdict.passed:
        if not force:
            registry.tag_version(version, {f"gate.{slot}": "failed", f"gate.{slot}.detail": verdict.as_dict()})
            raise Refused(
                f"quality gate refused version {version} (build {build}) for {slot}: {'; '.join(verdict.reasons)}; "
                "the slot still serves what it served (the refusal is recorded on the version; --force overrides)"
            )
        overrides.append("gate")
        progress(f"  gate failed ({'; '.join(verdict.reasons)}); overridden by --force, recorded on the version")
    else:
        progress(f"  gate passed: AUC {verdict.auc:.4f} (minimum {verdict.min_auc})" + (
            f", prod version {verdict.prod_version}: {verdict.prod_auc:.4f}" if verdict.prod_auc is not None else ""
        ))
    if slot == "prod" and registry.version_tags(version).get("validated.stage") != "true":
        if not force:
            raise Refused(
                f"version {version} (build {build}) has not passed stage validation; release it --to stage first "
                "(--force overrides, and the override is recorded); the slot still serves what it served"
            )
        overrides.append("stage-validation")
        progress("  not stage-validated; promoted anyway by --force, recorded on the version")
    tags: dict[str, Any] = {
        f"gate.{slot}": "overridden" if overrides else "passed", f"gate.{slot}.detail": verdict.as_dict()
    }
    if overrides:
        tags[f"forced.{slot}"] = ",".join(overrides)
    registry.tag_version(version, tags)
    return verdict, tuple(overrides)


def _deploy_and_validate(
    env: EnvConfig, target: Target, slot: str, name: str, version: str, test: pd.DataFrame, keep: set[str | None]
) -> smoke.SmokeResult:
    """Steps 4 and 5: the zero-traffic deployment, then its smoke validation. Cleans up on any failure."""
    rows = smoke.sample(test, env.validation)
    expected = smoke.offline_predictions(registry.model_uri(version), rows)
    try:
        target.create_deployment(slot, name, version)
        progress(f"  smoke validation: {len(rows)} test rows through {name}, one request each")
        def invoke(frame: pd.DataFrame) -> list[Any]:
            return target.invoke_deployment(slot, name, frame)

        result = smoke.validate(invoke, rows, expected, env.validation)
    except Exception:
        _discard(target, slot, name, keep)
        raise
    summary = {**result.as_dict(), "version": version, "deployment": name, "at": _now()}
    registry.tag_version(version, {f"validation.{slot}": summary})
    registry.record_last_validation(slot, summary)
    if not result.passed:
        _discard(target, slot, name, keep)
        raise Refused(
            f"smoke validation of version {version} in {slot} failed: {'; '.join(result.reasons)}; "
            f"traffic untouched, the slot serves what it served before"
        )
    progress(f"  validation passed: {result.summary()}")
    return result


def _discard(target: Target, slot: str, name: str, keep: set[str | None]) -> None:
    if name not in keep:
        target.delete_deployment(slot, name)
        progress(f"  deleted the new deployment {name}; traffic untouched")


def _delete_older(target: Target, slot: str, keep: set[str | None]) -> None:
    endpoint = target.describe(slot)
    for deployment in endpoint.deployments if endpoint else ():
        if deployment.name not in keep and deployment.traffic == 0:
            target.delete_deployment(slot, deployment.name)
            progress(f"  deleted older deployment {deployment.name} (version {deployment.version})")


def _slot_status(env: EnvConfig, slot: str, endpoint: EndpointInfo | None) -> dict[str, Any]:
    document: dict[str, Any] = {
        "endpoint": env.endpoint_name(slot), "url": None, "state": ABSENT, "traffic": {}, "serving": None,
        "previous": None, "deployments": [],
    }
    if endpoint is not None:
        document.update(
            endpoint=endpoint.name, url=endpoint.url, state=endpoint.state, traffic=endpoint.traffic,
            serving=_version_status(endpoint.serving), previous=_version_status(endpoint.deployment(endpoint.previous)),
            deployments=[asdict(deployment) for deployment in endpoint.deployments],
        )
    document["alias_version"] = registry.alias_version(slot)
    document["last_validation"] = registry.last_validation(slot)
    return document


def _version_status(deployment: DeploymentInfo | None) -> dict[str, Any] | None:
    if deployment is None:
        return None
    build = registry.version_tags(deployment.version).get(TAG_BUILD) if deployment.version else None
    return {"deployment": deployment.name, "version": deployment.version, "build": build, "state": deployment.state}


def _check_slot(slot: str) -> None:
    if slot not in SLOTS:
        raise UsageError(f"unknown slot '{slot}'; expected one of {', '.join(SLOTS)}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- the CLI handlers (deploy.cli.COMMANDS) -------------------------------------------------------


def run_release(args: argparse.Namespace, env: EnvConfig) -> int:
    result = release(env, args.slot, args.build, force=args.force, outputs=args.outputs)
    if args.json:
        emit_json(result.as_dict())
        return OK
    verb = "already serves" if result.already_serving else "now serves"
    print(f"{result.endpoint} {verb} build {result.build} (model version {result.version}, {result.deployment})")
    print(f"  url: {result.url}")
    if result.validation:
        print(f"  validation: {smoke.summary(result.validation)}")
    print(f"  rollback target: {result.previous or 'none'}")
    if result.overrides:
        print(f"  forced past: {', '.join(result.overrides)} (recorded on the model version)")
    return OK


def run_rollback(args: argparse.Namespace, env: EnvConfig) -> int:
    if args.only_if_serving is not None:
        # The pipelines' step after a failed release: only a failure after the traffic switch leaves the
        # slot serving the new build, and only then is moving back right; before the switch the slot
        # still serves the previous release, which a rollback would undo.
        from deploy.core.build_id import BUILD_ID, BUILD_ID_EXPECTED, LATEST

        if not BUILD_ID.fullmatch(args.only_if_serving) or args.only_if_serving.casefold() == LATEST:
            raise UsageError(f"--only-if-serving {args.only_if_serving!r} is invalid; expected {BUILD_ID_EXPECTED}")
        serving = (status(env, outputs=args.outputs)["slots"][args.slot]["serving"] or {}).get("build")
        if serving != args.only_if_serving:
            if args.json:
                emit_json({"environment": env.name, "slot": args.slot, "endpoint": env.endpoint_name(args.slot),
                           "rolled_back": False, "serving_build": serving})
            else:
                print(f"{env.endpoint_name(args.slot)} serves build {serving or 'none'}, not "
                      f"{args.only_if_serving}: nothing to roll back")
            return OK
    result = rollback(env, args.slot, outputs=args.outputs)
    if args.json:
        emit_json(result.as_dict())
    else:
        print(f"{result.endpoint} serves {result.deployment} (model version {result.version}) again; "
              f"{result.rolled_back_from} kept for roll-forward")
    return OK


def run_down(args: argparse.Namespace, env: EnvConfig) -> int:
    stopped = down(env)
    print(f"stopped {', '.join(stopped)}" if stopped else "no local scoring server was running")
    return OK
