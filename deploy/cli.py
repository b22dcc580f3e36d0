"""`python -m deploy`: the argument parser for every command, and the one place errors become exits.

Each command is a `module:function` string, imported only when that command runs, so `--help`
and argument errors never pay for azure-ai-ml, mlflow or databricks-sdk. A handler takes the
parsed arguments and the environment's config and returns an exit status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from deploy.core.errors import INTERRUPTED, REFUSED, USAGE, DeployError
from deploy.core.report import emit_json, json_emitted, start_command

COMMANDS = {
    "train": "deploy.train:run",
    "score": "deploy.score:run",
    "release": "deploy.release.rollout:run_release",
    "rollback": "deploy.release.rollout:run_rollback",
    "down": "deploy.release.rollout:run_down",
    "status": "deploy.status:run",
    "rotate-secret": "deploy.identity.rotation:run",
    "monitor": "deploy.monitor:run",
}
SLOTS = ("stage", "prod")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env", required=True, help="environment name from config/environments.toml")
    common.add_argument("--config", help="environments file (default: config/environments.toml or $CHURN_CONFIG)")
    common.add_argument("--outputs", help="stack outputs file (default: the environment's outputs_file)")
    common.add_argument("--debug", action="store_true", help="show tracebacks and SDK logging")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    slot_lock = argparse.ArgumentParser(add_help=False)
    slot_lock.add_argument(
        "--lock-wait", type=float, metavar="SECONDS",
        help="how long to wait for another command holding the slot's lock (default: locks.wait_seconds)",
    )

    parser = argparse.ArgumentParser(
        prog="python -m deploy", description="Train, release, roll back and operate the churn model."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", parents=[common, as_json], help="train a build and log its MLflow run")
    train.add_argument("--build", help="CI build number (default: a generated id)")
    train.add_argument("--source", help="CI source, e.g. repo@commit (default: manual)")
    train.add_argument("--data", help="churn CSV to train on (local only; default: synthetic data)")
    train.add_argument("--no-wait", action="store_true", help="start the job and return without waiting")
    train.add_argument("--force", action="store_true", help="start a new run even if this build has one")

    score = commands.add_parser(
        "score", parents=[common, as_json], help="score the customer base with a model version (batch, on Spark)"
    )
    model = score.add_mutually_exclusive_group()
    model.add_argument("--slot", choices=SLOTS, help="score with the version this slot serves (default: prod)")
    model.add_argument("--version", help="score with this registered model version")
    score.add_argument("--date", help="scoring date YYYY-MM-DD (default: today, UTC); a re-run replaces its scores")
    score.add_argument("--input", help="customer table URI (default: the data container's churn table)")

    release = commands.add_parser(
        "release", parents=[common, as_json, slot_lock], help="gate, deploy blue/green, validate and switch a slot"
    )
    release.add_argument("--to", required=True, choices=SLOTS, dest="slot", help="slot to release into")
    release.add_argument("--build", help="build number, or latest (default: the newest finished build)")
    release.add_argument("--force", action="store_true", help="override a failed gate (the override is recorded)")

    rollback = commands.add_parser(
        "rollback", parents=[common, as_json, slot_lock], help="move a slot back to its previous deployment"
    )
    rollback.add_argument("--to", required=True, choices=SLOTS, dest="slot", help="slot to roll back")
    rollback.add_argument(
        "--only-if-serving", metavar="BUILD",
        help="roll back only if the slot serves this build, else change nothing and exit 0 (after a failed release)",
    )

    monitor = commands.add_parser(
        "monitor", parents=[common, as_json], help="drift, data quality, health and realized quality of a slot",
        description="Judge what a slot's model sees against its training split. Exit status: 0 no threshold "
        "crossed, 3 a threshold crossed, 2 bad input, 1 a failure.",
    )
    monitor.add_argument("--slot", default="prod", choices=SLOTS, help="slot to monitor (default: prod)")
    monitor.add_argument("--window", default="7d", help="how far back to look: Nd or Nh, e.g. 7d or 36h (default: 7d)")
    monitor.add_argument(
        "--retrain", action="store_true",
        help="local only: when drift or decay crosses a threshold, train build monitor-<date> in process",
    )

    commands.add_parser("status", parents=[common, as_json], help="slots, versions, traffic and secret expiry")
    commands.add_parser("down", parents=[common, slot_lock], help="stop the local scoring servers (local only)")

    rotate = commands.add_parser(
        "rotate-secret", parents=[common, as_json], help="give the automation identity a fresh client secret"
    )
    rotate.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    pruning = rotate.add_mutually_exclusive_group()
    pruning.add_argument("--prune-now", action="store_true", help="remove old credentials now, not after the overlap")
    pruning.add_argument("--keep-old", action="store_true", help="remove no old credentials")
    rotate.add_argument("--lifetime-days", type=int, help="lifetime of the new secret (default from config, max 730)")
    rotate.add_argument(
        "--if-due", action="store_true",
        help="rotate only if status warns about the secret (missing or near expiry); exit 1 if its state is unknown",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start_command()
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING, stream=sys.stderr)
    try:
        from config import ConfigError, load_environment

        try:
            env = load_environment(args.env, args.config)
        except ConfigError as exc:
            return _fail(args, str(exc), USAGE, "config")
        module_name, function_name = COMMANDS[args.command].split(":")
        handler = getattr(importlib.import_module(module_name), function_name)
        return handler(args, env)
    except DeployError as exc:
        if args.debug:
            raise
        return _fail(args, f"error: {exc}", exc.exit_status, "usage" if exc.exit_status == USAGE else "refused")
    except KeyboardInterrupt:
        return _fail(args, "interrupted", INTERRUPTED, "interrupted")
    except Exception as exc:  # an SDK or service failure: one line, the traceback only on request
        if args.debug:
            raise
        message = f"error: {type(exc).__name__}: {_first_line(exc)} (rerun with --debug for details)"
        return _fail(args, message, REFUSED, "failed")


def _fail(args: argparse.Namespace, message: str, exit_status: int, kind: str) -> int:
    """One line on stderr; with --json also one JSON object on stdout, so a pipeline step can read the failure."""
    print(message, file=sys.stderr)
    if getattr(args, "json", False) and not json_emitted():
        emit_json({"error": message.removeprefix("error: "), "kind": kind, "exit_status": exit_status})
    return exit_status


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"
