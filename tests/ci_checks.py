"""What the checks of both CI systems share (tests/test_pipelines.py for Azure DevOps,
tests/test_workflows.py for GitHub Actions): the public schemas, walking a YAML document, the real CLI
parser applied to every `python -m deploy` line, the Makefile's targets, and the one-line rule for
shell. Both systems call the same Makefile targets and `python -m deploy` commands, so a fix lands once.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
from collections.abc import Iterator
from importlib import resources
from typing import Any

import jsonschema

from config import PROJECT_ROOT, load_all
from deploy.cli import build_parser

AZURE_ENVS = sorted(name for name, env in load_all().items() if not env.is_local)
DEPLOY_CALL = re.compile(r"python3?\s+-m\s+deploy(?=\s|$)")
SHELL_OPERATOR = re.compile(r"[;&|<>()]+")
MAKE_CALL = re.compile(r"\bmake (?:--[\w-]+ )*([\w-]+)")
# The value both systems give azure-identity, so DefaultAzureCredential uses the step's Azure CLI login.
PINNED_CREDENTIAL = "AzureCliCredential"


def vendored_schema(name: str) -> dict[str, Any]:
    """A public CI schema as the check-jsonschema package (a dev dependency) vendors it: Microsoft's Azure
    Pipelines schema, SchemaStore's GitHub workflow and action schemas. No file outside the repository."""
    return json.loads(resources.files("check_jsonschema.builtin_schemas.vendor").joinpath(name).read_text())


def leaves(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """The errors that explain `error`. Under anyOf/oneOf they come from the branch that fits best:
    the fewest complaints about the object itself or a discriminating key (`task: AzureCLI@2` picks
    the AzureCLI branch), then the fewest errors, so a step reports its own task's complaint."""
    if not error.context:
        return [error]
    depth = len(error.absolute_path)
    branches: dict[Any, list[jsonschema.ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)

    def misfit(errors: list[jsonschema.ValidationError]) -> tuple[int, int]:
        shape = sum(
            len(e.absolute_path) == depth
            or (len(e.absolute_path) == depth + 1 and e.validator in ("enum", "const", "pattern"))
            for e in errors
        )
        return shape, len(errors)

    closest = min(branches.values(), key=misfit)
    return [leaf for sub in closest for leaf in leaves(sub)]


def walk(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every node with its path; mapping keys are visited too (they hold `${{ if ... }}` expressions)."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*path, "<key>"), key
            yield from walk(value, (*path, str(key)))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from walk(item, (*path, str(index)))


def where(path: tuple[str, ...]) -> str:
    return "/".join(path) or "(top)"


# --- the CLI check -----------------------------------------------------------------------------------


class CommandLineError(ValueError):
    pass


def deploy_command_lines(document: Any) -> list[str]:
    """Every `python -m deploy ...` in the document's strings, continuation lines joined, unsubstituted."""
    found = []
    for _, node in walk(document):
        if not isinstance(node, str):
            continue
        for line in node.replace("\\\n", " ").splitlines():
            found.extend(line[match.start() :].strip() for match in DEPLOY_CALL.finditer(line))
    return found


def deploy_arguments(command: str) -> list[str]:
    """The arguments after `-m deploy`, up to the first shell operator (redirection, pipe, `)`, `;`)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = iter(lexer)  # lazily: what follows the command may be half of a larger shell construct
    for token in tokens:
        if token == "deploy":
            break
    arguments: list[str] = []
    for token in tokens:
        if SHELL_OPERATOR.fullmatch(token):
            if token[0] in "<>" and arguments and arguments[-1].isdigit():
                arguments.pop()  # the file descriptor of `2>&1`
            break
        arguments.append(token)
    return arguments


def parse_deploy_command(command: str) -> argparse.Namespace:
    """Parse with the CLI's real parser; a CommandLineError carries the parser's own complaint."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser().parse_args(deploy_arguments(command))
    except SystemExit:
        complaint = stderr.getvalue().strip().splitlines() or ["no message"]
        raise CommandLineError(f"`{command}`: {complaint[-1]}") from None


def commands_seen(parsed: list[argparse.Namespace]) -> set[tuple[str, str | None]]:
    return {(args.command, getattr(args, "slot", None)) for args in parsed}


# The flow both systems run: train, release to each slot, the guarded prod rollback, status, rotation.
EXPECTED_COMMANDS = {
    ("train", None), ("release", "stage"), ("release", "prod"), ("rollback", "prod"), ("status", None),
    ("rotate-secret", None),
}


# --- the Makefile ------------------------------------------------------------------------------------


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (PROJECT_ROOT / "Makefile").read_text(), flags=re.MULTILINE))


def make_targets_in(text: str) -> set[str]:
    """The targets a shell text runs with `make` (options like --no-print-directory skipped)."""
    return set(MAKE_CALL.findall(text))


# --- the one-line rule -------------------------------------------------------------------------------


def command_lines(script: str) -> list[str]:
    """A shell text's command lines: continuations joined, blank lines, comments and `set -euo pipefail` left out."""
    lines = [line.strip() for line in script.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line and not line.startswith("#") and line != "set -euo pipefail"]
