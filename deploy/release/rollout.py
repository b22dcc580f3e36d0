"""Release a build into a slot (stage or prod), roll a slot back, stop local servers.

(`slot_status` shows what the slots serve.)

`release` reads top-down as the steps of the release, all under the slot's lock:

1. find the build's finished run in experiment automl-churn;
2. register its model version (or reuse the one it already registered) and tag it with its origin;
3. the quality gate against the version prod serves, on both models' test sets (and, for prod,
   the stage-validation check; a version rolled back from the slot needs --force);
4. blue/green: a deployment named after the version, beside the serving one, with zero traffic;
5. smoke validation of that deployment directly, against the offline predictions of the version;
6. traffic to it, the previous deployment kept for rollback;
7. a last check through the slot's public URL; then older deployments are deleted.

Until step 6 switches traffic, nothing the slot serves has changed: a refusal or a failure stops
the release there (a deployment it created is deleted). If step 7 fails, traffic goes back to the
previous deployment. A re-run converges: the deployment name comes from the version, so it finds
what an interrupted run left, and a version the slot already serves is reported as such.

Which version a slot serves is what its serving target says (the deployment holding the traffic),
never an MLflow alias: Azure ML's registry has none. Aliases are still set where the registry
takes them, as a convenience. The Databricks deploy notebook calls `release` too.

Exit statuses: 0 done; 1 refused by the gate or the validation, a held lock, or nothing to roll back
to (nothing changed); 2 bad input or configuration.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from config import EnvConfig
from config.naming import SLOTS
from deploy.core.contract import REGISTERED_MODEL, TAG_BUILD, TAG_SOURCE
from deploy.core.errors import OK, DeployError, Refused, UsageError
from deploy.core.report import emit_json, progress
from deploy.platform import locks, tracking
from deploy.platform.outputs import Outputs, StackOutputs, resolve_outputs
from deploy.release import gate, registry, smoke, targets
from deploy.release.slot_status import version_status
from deploy.release.targets.base import Target, deployment_name

if TYPE_CHECKING:
    import pandas as pd

ROLLED_BACK = "rolled-back"
PUBLIC_CHECK_ROWS = 5


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
class NotServing:
    """rollback --only-if-serving: the slot serves another build (or none), so nothing was rolled back."""

    build: str | None


@dataclass(frozen=True)
class RollbackResult:
    environment: str
    slot: str
    endpoint: str
    url: str | None
    deployment: str  # now serving
    version: str | None
    rolled_back_from: str
    rolled_back_version: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def release(
    env: EnvConfig, slot: str, build: str | None = None, force: bool = False, outputs: Outputs = None,
    target: Target | None = None, lock_wait: float | None = None, slot_locks: locks.Locks | None = None,
) -> ReleaseResult:
    """Release `build` (None or "latest": the newest finished run) into `slot`. Raises Refused or UsageError."""
    _check_slot(slot)
    stack = resolve_outputs(env, outputs)
    tracking.use_environment(env, stack)
    target = target or targets.for_environment(env, stack)
    with _slot_lock(env, stack, slot, lock_wait, slot_locks):
        # 1. Find the run.
        run = registry.find_run(build)
        build_id = run.data.tags.get(TAG_BUILD, "")
        progress(f"release build {build_id} (run {run.info.run_id}) to {slot} in environment {env.name}")

        # 2. Register the model version, or reuse the one this run registered.
        version = registry.register(run)
        progress(f"  model {REGISTERED_MODEL} version {version}")

        # 3. Quality gate against the version prod serves (and, for prod, stage validation first).
        candidate = gate.model_of(env, stack, run, version)
        champion = _champion(env, stack, target, version)
        verdict, overrides = _quality_gate(env, slot, version, build_id, candidate, champion, force)

        # 4. Blue/green: the version's own deployment in the slot's endpoint (created if missing), beside
        #    the serving one. A slot that already serves this version is left as it is: a re-run converges.
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
            validation = _deploy_and_validate(env, target, slot, name, version, candidate.test, keep)
            # 6. Switch: all traffic to it, the previous deployment kept for rollback.
            target.switch_traffic(slot, to=name, previous=previous)
            kept = f"; {previous} kept for rollback" if previous else ""
            progress(f"  {endpoint.name}: 100% of traffic to {name}{kept}")
            # 7. Through the front door: the slot's public URL answers as the validated deployment did.
            _check_public_url(target, slot, name, version, candidate.test, previous, endpoint.previous, keep)
        _delete_older(target, slot, keep={name, previous})
        registry.tag_version(version, {f"validated.{slot}": "true"})
        registry.try_set_alias(slot, version)

    return ReleaseResult(
        environment=env.name, slot=slot, endpoint=endpoint.name, url=endpoint.url, build=build_id,
        source=run.data.tags.get(TAG_SOURCE, ""), run_id=run.info.run_id, version=version, deployment=name,
        previous=previous, already_serving=validation is None, gate=verdict.as_dict(),
        validation=None if validation is None else validation.as_dict(), overrides=overrides,
    )


def rollback(
    env: EnvConfig, slot: str, outputs: Outputs = None, target: Target | None = None,
    lock_wait: float | None = None, slot_locks: locks.Locks | None = None, only_if_serving: str | None = None,
) -> RollbackResult | NotServing:
    """Move `slot`'s traffic back to its previous deployment and delete the rolled-back one.

    Refused (exit 1), changing nothing, when the slot has no previous deployment, including right
    after a rollback. With `only_if_serving`, a slot that does not serve that build is left alone
    (NotServing): the pipelines' step after a failed release, decided under the slot's lock."""
    _check_slot(slot)
    stack = resolve_outputs(env, outputs)
    target = target or targets.for_environment(env, stack)
    tracking.use_environment(env, stack)
    with _slot_lock(env, stack, slot, lock_wait, slot_locks):
        endpoint = target.describe(slot)
        current = endpoint.serving if endpoint else None
        if only_if_serving is not None:
            # Only a failure after the traffic switch leaves the slot serving the new build, and only then is
            # moving back right; before the switch the slot still serves the previous release.
            serving_build = (version_status(current) or {}).get("build")
            if serving_build != only_if_serving:
                return NotServing(serving_build)
        previous = endpoint.deployment(endpoint.previous) if endpoint else None
        if endpoint is None or current is None or previous is None:
            serving = f"it serves {current.name}" if current else "it serves nothing"
            raise Refused(
                f"slot {slot} ({env.endpoint_name(slot)}) has no previous deployment to roll back to ({serving}); "
                "nothing changed"
            )
        if not previous.healthy:  # e.g. a local server that did not survive a reboot
            target.create_deployment(slot, previous.name, previous.version or "")
        # One way only: the rolled-back deployment is deleted and no rollback target remains, so a repeated
        # rollback (a retried step) is refused instead of bringing the bad version back. Roll forward with
        # `release`; the version is marked rolled-back in the slot, so release refuses it there unforced.
        target.switch_traffic(slot, to=previous.name, previous=None)
        if current.version:
            registry.tag_version(current.version, {f"validated.{slot}": ROLLED_BACK})
        target.delete_deployment(slot, current.name)
        if previous.version:
            registry.try_set_alias(slot, previous.version)
    progress(f"rolled {endpoint.name} back from {current.name} to {previous.name} (version {previous.version})")
    return RollbackResult(
        environment=env.name, slot=slot, endpoint=endpoint.name, url=endpoint.url, deployment=previous.name,
        version=previous.version, rolled_back_from=current.name, rolled_back_version=current.version,
    )


def down(env: EnvConfig, lock_wait: float | None = None, slot_locks: locks.Locks | None = None) -> list[str]:
    """Stop the local routers and scoring servers (holding both slots' locks); returns what was stopped."""
    if not env.is_local:
        raise UsageError(
            f"down stops local scoring servers; environment '{env.name}' is {env.kind}, expected a local one"
        )
    from deploy.release.targets.local import LocalTarget

    with contextlib.ExitStack() as held:
        for slot in SLOTS:
            held.enter_context(_slot_lock(env, None, slot, lock_wait, slot_locks))
        return LocalTarget(env).down()


# --- the steps ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _slot_lock(
    env: EnvConfig, stack: StackOutputs | None, slot: str, lock_wait: float | None, slot_locks: locks.Locks | None
) -> Iterator[None]:
    """One release, rollback or down per slot at a time, across processes and machines."""
    slot_locks = slot_locks or tracking.environment_locks(env, stack)
    wait = env.locks.wait_seconds if lock_wait is None else lock_wait
    with slot_locks.hold(f"slot-{slot}", f"slot {slot} ({env.endpoint_name(slot)})", wait_seconds=wait):
        yield


def _champion(env: EnvConfig, stack: StackOutputs | None, target: Target, candidate: str) -> gate.Model | None:
    """The version prod serves, as its serving target says, with its own test set; None when prod serves nothing.

    An error reading prod (a 403, throttling, a 5xx) is not "no champion": it stops the release."""
    prod = target.describe("prod")
    serving = prod.serving if prod else None
    if serving is None or not serving.version or serving.version == candidate:
        return None
    return gate.model_of(env, stack, registry.run_of(serving.version), serving.version)


def _quality_gate(
    env: EnvConfig, slot: str, version: str, build: str, candidate: gate.Model, champion: gate.Model | None,
    force: bool,
) -> tuple[gate.GateResult, tuple[str, ...]]:
    verdict = gate.evaluate(candidate, env.gate, champion)
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
            f"; prod version {verdict.prod_version}: {verdict.prod_auc:.4f} on this test set, "
            f"{verdict.prod_reference_auc:.4f} against {verdict.reference_auc:.4f} on its own"
            if verdict.prod_version else ""
        ))
    tags = registry.version_tags(version)
    if tags.get(f"validated.{slot}") == ROLLED_BACK:
        if not force:
            raise Refused(
                f"version {version} (build {build}) was rolled back from {slot}; release another build, or --force "
                "to bring it back (recorded on the version); the slot still serves what it served"
            )
        overrides.append(ROLLED_BACK)
        progress(f"  rolled back from {slot} before; released again by --force, recorded on the version")
    if slot == "prod" and tags.get("validated.stage") != "true":
        if not force:
            raise Refused(
                f"version {version} (build {build}) has not passed stage validation; release it --to stage first "
                "(--force overrides, and the override is recorded); the slot still serves what it served"
            )
        overrides.append("stage-validation")
        progress("  not stage-validated; promoted anyway by --force, recorded on the version")
    recorded: dict[str, Any] = {
        f"gate.{slot}": "overridden" if overrides else "passed", f"gate.{slot}.detail": verdict.as_dict()
    }
    if overrides:
        recorded[f"forced.{slot}"] = ",".join(overrides)
    registry.tag_version(version, recorded)
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


def _check_public_url(
    target: Target, slot: str, name: str, version: str, test: pd.DataFrame, previous: str | None,
    rollback_target: str | None, keep: set[str | None],
) -> None:
    """Step 7: a few rows through the slot's public URL (locally the router, on Azure the scoring URI) must
    answer as the version does in process. If not, traffic goes back to `previous` and the new deployment goes."""
    rows = smoke.sample(test, None, PUBLIC_CHECK_ROWS)
    expected = smoke.offline_predictions(registry.model_uri(version), rows)
    try:
        answers = target.invoke_slot(slot, rows)
        if len(answers) != len(rows) or not all(map(smoke.same, answers, expected)):
            raise DeployError(f"answered {answers!r:.200}, expected {expected!r:.200}")
    except Exception as exc:
        if previous is None:
            raise DeployError(
                f"slot {slot} does not answer through its public URL after the switch to {name} ({exc}); "
                "it had nothing to go back to"
            ) from None
        target.switch_traffic(slot, to=previous, previous=rollback_target)
        _discard(target, slot, name, keep)
        raise Refused(
            f"slot {slot} answered wrongly through its public URL after the switch to {name} ({exc}); "
            f"traffic is back on {previous}"
        ) from None
    progress(f"  public URL answers: {len(rows)} rows as version {version} predicts them")


def _delete_older(target: Target, slot: str, keep: set[str | None]) -> None:
    endpoint = target.describe(slot)
    for deployment in endpoint.deployments if endpoint else ():
        if deployment.name not in keep and deployment.traffic == 0:
            target.delete_deployment(slot, deployment.name)
            progress(f"  deleted older deployment {deployment.name} (version {deployment.version})")


def _check_slot(slot: str) -> None:
    if slot not in SLOTS:
        raise UsageError(f"unknown slot '{slot}'; expected one of {', '.join(SLOTS)}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- the CLI handlers (deploy.cli.COMMANDS) -------------------------------------------------------


def run_release(args: argparse.Namespace, env: EnvConfig) -> int:
    result = release(env, args.slot, args.build, force=args.force, outputs=args.outputs, lock_wait=args.lock_wait)
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
    guard = args.only_if_serving
    if guard is not None:
        from deploy.core.build_id import BUILD_ID, BUILD_ID_EXPECTED, LATEST

        if not BUILD_ID.fullmatch(guard) or guard.casefold() == LATEST:
            raise UsageError(f"--only-if-serving {guard!r} is invalid; expected {BUILD_ID_EXPECTED}")
    result = rollback(env, args.slot, outputs=args.outputs, lock_wait=args.lock_wait, only_if_serving=guard)
    if isinstance(result, NotServing):
        if args.json:
            emit_json({"environment": env.name, "slot": args.slot, "endpoint": env.endpoint_name(args.slot),
                       "rolled_back": False, "serving_build": result.build})
        else:
            print(f"{env.endpoint_name(args.slot)} serves build {result.build or 'none'}, not {guard}: "
                  "nothing to roll back")
        return OK
    if args.json:
        emit_json(result.as_dict())
    else:
        print(f"{result.endpoint} serves {result.deployment} (model version {result.version}) again; "
              f"{result.rolled_back_from} (version {result.rolled_back_version}) was deleted and is marked "
              "rolled-back in the slot; roll forward with release")
    return OK


def run_down(args: argparse.Namespace, env: EnvConfig) -> int:
    stopped = down(env, lock_wait=args.lock_wait)
    print(f"stopped {', '.join(stopped)}" if stopped else "no local scoring server was running")
    return OK
