"""Every `${...}` in each synthesized cdk.tf.json names something the same file declares.

Terraform would catch a dangling reference at plan time, but plan cannot run here (no provider
downloads), so this reads the expressions itself: HCL templates are parsed with their string literals,
nested templates and object keys told apart, so `"a.b"` inside a string or a `key =` in an object
literal is never taken for a reference. The stacks are synthesized by the real app, `python main.py`.
"""

from __future__ import annotations

import graphlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from stacks import scan_input
from tests.conftest import PROJECT_ROOT

TRAVERSAL = re.compile(r'[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*|\.\d+|\.\*|\[\d+\]|\["[^"]*"\])*')
NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
KEYWORDS = frozenset({"true", "false", "null", "for", "in", "if", "else", "endif", "endfor"})
# Terraform's built-in functions (https://developer.hashicorp.com/terraform/language/functions).
FUNCTIONS = frozenset(
    """
    abs ceil floor log max min parseint pow signum chomp endswith format formatlist indent join lower
    regex regexall replace split startswith strcontains strrev substr title trim trimprefix trimsuffix
    trimspace upper alltrue anytrue chunklist coalesce coalescelist compact concat contains distinct
    element flatten index keys length list lookup map matchkeys merge one range reverse setintersection
    setproduct setsubtract setunion slice sort sum transpose values zipmap base64decode base64encode
    base64gzip csvdecode jsondecode jsonencode textdecodebase64 textencodebase64 urlencode yamldecode
    yamlencode abspath dirname pathexpand basename file fileexists fileset filebase64 templatefile
    formatdate plantimestamp timeadd timecmp timestamp base64sha256 base64sha512 bcrypt filebase64sha256
    filebase64sha512 filemd5 filesha1 filesha256 filesha512 md5 rsadecrypt sha1 sha256 sha512 uuid uuidv5
    cidrhost cidrnetmask cidrsubnet cidrsubnets can ephemeralasnull issensitive nonsensitive sensitive
    tobool tolist tomap tonumber toset tostring try type
    """.split()  # noqa: SIM905 - a word list reads better than 120 quoted strings
)


# --- the expression reader ---------------------------------------------------------------------


def closing_brace(text: str, start: int) -> int:
    """Index of the `}` that closes a template opened just before `start`, skipping strings and nested braces."""
    depth, index = 1, start
    while index < len(text):
        char = text[index]
        if char == '"':
            index = string_end(text, index)
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    raise ValueError(f"unclosed ${{ in {text!r}")


def string_end(text: str, start: int) -> int:
    """Index just past the HCL string literal opening at `start` (templates inside it included)."""
    index = start + 1
    while index < len(text):
        if text[index] == "\\":
            index += 2
        elif text.startswith("$${", index):
            index += 3
        elif text.startswith("${", index):
            index = closing_brace(text, index + 2) + 1
        elif text[index] == '"':
            return index + 1
        else:
            index += 1
    raise ValueError(f"unterminated string in {text!r}")


def templates(text: str) -> Iterator[str]:
    """The expression inside each `${...}` of a JSON string value (`$${` is a literal `${`)."""
    index = 0
    while index < len(text):
        if text.startswith("$${", index):
            index += 3
        elif text.startswith("${", index):
            end = closing_brace(text, index + 2)
            yield text[index + 2:end]
            index = end + 1
        else:
            index += 1


def references(expression: str) -> Iterator[tuple[str, str]]:
    """("call", function) and ("ref", traversal) for every function call and reference in an HCL expression."""
    index = 0
    while index < len(expression):
        char = expression[index]
        if char == '"':
            end = string_end(expression, index)
            for inner in templates(expression[index + 1:end - 1]):
                yield from references(inner)
            index = end
        elif char.isalpha() or char == "_":
            token = TRAVERSAL.match(expression, index).group(0)
            index += len(token)
            rest = expression[index:].lstrip()
            if rest.startswith("("):
                yield "call", token
            elif rest.startswith("=") and not rest.startswith("=="):
                continue  # an object key, not a reference
            elif token not in KEYWORDS:
                yield "ref", token
        elif char.isdigit():
            index += NUMBER.match(expression, index).end() - index
        else:
            index += 1


def undeclared(document: dict[str, Any]) -> tuple[list[str], int]:
    """(problems, number of references checked) for one synthesized stack."""
    problems, checked = [], 0
    for where, kind, name in found_in(document):
        checked += 1
        problem = _check(document, kind, name)
        if problem:
            problems.append(f"{where}: {problem}")
    return problems, checked


def found_in(node: Any) -> Iterator[tuple[str, str, str]]:
    """(path, "ref" or "call", name) for every reference and function call in a block of configuration."""
    for where, text, is_reference in _expressions(node):
        if is_reference:
            yield where, "ref", text
        else:
            yield from ((where, kind, name) for inner in templates(text) for kind, name in references(inner))


def _expressions(node: Any, where: str = "") -> Iterator[tuple[str, str, bool]]:
    """(path, string, is a bare reference) for every string; depends_on entries are bare references."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "//":
                continue  # cdktn metadata, not configuration
            if key == "depends_on":
                yield from ((f"{where}.depends_on", item, True) for item in value)
            else:
                yield from _expressions(value, f"{where}.{key}")
    elif isinstance(node, list):
        for position, value in enumerate(node):
            yield from _expressions(value, f"{where}[{position}]")
    elif isinstance(node, str):
        yield where, node, False


def _check(document: dict[str, Any], kind: str, name: str) -> str | None:
    if kind == "call":
        return None if name in FUNCTIONS else f"unknown function {name}()"
    parts = re.split(r"\.|\[", name)
    head = parts[0]
    if head == "data":
        declared = len(parts) >= 3 and parts[2] in document.get("data", {}).get(parts[1], {})
    elif head in ("var", "local", "module"):
        table = {"var": "variable", "local": "locals", "module": "module"}[head]
        declared = len(parts) >= 2 and parts[1] in document.get(table, {})
    else:
        declared = len(parts) >= 2 and parts[1] in document.get("resource", {}).get(head, {})
    return None if declared else f"{name} is not declared"


def dependency_graph(document: dict[str, Any]) -> dict[str, set[str]]:
    """Every resource, data source, local and output -> what its configuration references."""
    blocks = {f"local.{name}": body for name, body in document.get("locals", {}).items()}
    blocks.update({f"output.{name}": body for name, body in document.get("output", {}).items()})
    for prefix, block in (("", "resource"), ("data.", "data")):
        for kind, items in document.get(block, {}).items():
            blocks.update({f"{prefix}{kind}.{name}": body for name, body in items.items()})
    return {
        node: {_node(name) for _, kind, name in found_in(body) if kind == "ref"} for node, body in blocks.items()
    }


def _node(reference: str) -> str:
    parts = re.split(r"\.|\[", reference)
    return ".".join(parts[:3] if parts[0] == "data" else parts[:2])


# --- the synthesized stacks --------------------------------------------------------------------


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Synthesized as `make infra-destroy ENV=dev` would (CHURN_TEARDOWN=churn-dev): one synthesis shows both the
    teardown variant (dev) and the normal one (prod); references are the same in both."""
    outdir = tmp_path_factory.mktemp("cdktf.out")
    result = subprocess.run(
        [sys.executable, "main.py"], cwd=PROJECT_ROOT,
        env={**os.environ, "CDKTF_OUTDIR": str(outdir), "CHURN_TEARDOWN": "churn-dev"},
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return {path.parent.name: json.loads(path.read_text()) for path in sorted(outdir.glob("stacks/*/cdk.tf.json"))}


def test_the_app_synthesizes_one_stack_per_azure_environment(stacks):
    assert sorted(stacks) == ["churn-dev", "churn-prod"]


def test_the_teardown_variable_lifts_the_workspace_guard_of_its_stack_only(stacks):
    guards = {
        stack: [workspace["lifecycle"]["prevent_destroy"]
                for workspace in doc["resource"]["azurerm_databricks_workspace"].values()]
        for stack, doc in stacks.items()
    }
    assert guards == {"churn-dev": [False], "churn-prod": [True]}


def test_the_scan_copy_drops_only_what_checkov_cannot_parse(stacks, tmp_path):
    """`make scan` runs checkov over this copy: the same stacks without terraform.required_version."""
    outdir = tmp_path / "cdktf.out"
    for name, document in stacks.items():
        (outdir / "stacks" / name).mkdir(parents=True)
        (outdir / "stacks" / name / "cdk.tf.json").write_text(json.dumps(document))
    assert scan_input.main([str(outdir), str(tmp_path / "scan")]) == 0
    for name, document in stacks.items():
        copy = json.loads((tmp_path / "scan" / "stacks" / name / "cdk.tf.json").read_text())
        settings = {key: value for key, value in document["terraform"].items() if key != "required_version"}
        assert "required_version" in document["terraform"]
        assert copy == {**document, "terraform": settings}
    assert scan_input.main([str(tmp_path / "empty"), str(tmp_path / "scan")]) == 2


@pytest.mark.parametrize("stack", ["churn-dev", "churn-prod"])
def test_every_reference_resolves(stacks, stack):
    problems, checked = undeclared(stacks[stack])
    assert problems == []
    assert checked > 100  # the stacks are densely wired; far fewer would mean the reader missed them


@pytest.mark.parametrize("stack", ["churn-dev", "churn-prod"])
def test_dependencies_have_no_cycle(stacks, stack):
    graph = dependency_graph(stacks[stack])
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    assert order.index("azurerm_resource_group.group") < order.index("output.resource_group")
    outputs_file = next(node for node in graph if node.startswith("databricks_workspace_file.databricks_file_outputs"))
    assert {"databricks_job", "databricks_directory"} <= {node.split(".")[0] for node in graph[outputs_file]}


@pytest.mark.parametrize("stack", ["churn-dev", "churn-prod"])
def test_every_kind_of_reference_is_read(stacks, stack):
    found = {(kind, name.split(".")[0]) for _, kind, name in found_in(stacks[stack])}
    assert {("ref", "data"), ("ref", "local"), ("ref", "azurerm_key_vault"), ("call", "base64encode"),
            ("call", "jsonencode")} <= found


# --- the reader itself -------------------------------------------------------------------------

DOCUMENT = {
    "resource": {"azurerm_key_vault": {"kv": {}}, "databricks_job": {"train": {}}},
    "data": {"azurerm_client_config": {"client": {}}},
    "locals": {"host": "x"},
    "variable": {"region": {}},
}


@pytest.mark.parametrize(
    "value",
    [
        "${azurerm_key_vault.kv.vault_uri}",
        "https://${local.host}/${var.region}",
        "${data.azurerm_client_config.client.tenant_id}",
        '${base64encode(jsonencode({"churn-dev" = {"id" = databricks_job.train.id, "n" = 1.5e3}}))}',
        '${format("%s.%s", "not.a_reference", azurerm_key_vault.kv.id)}',
        '${jsonencode({key = "value ${local.host}", other = true})}',
        "literal $${not.a_reference} text",
        "${azurerm_key_vault.kv.network_acls[0].bypass}",
        '${lookup({a = 1}, "a", null)}',
    ],
)
def test_reader_accepts_declared_references(value):
    assert undeclared({**DOCUMENT, "output": {"x": {"value": value}}})[0] == []


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("${azurerm_key_vault.missing.id}", "azurerm_key_vault.missing.id is not declared"),
        ("${data.azurerm_client_config.other.tenant_id}", "data.azurerm_client_config.other.tenant_id is not declared"),
        ("https://${local.nope}", "local.nope is not declared"),
        ('${jsonencode({"a" = azurerm_storage_account.x.name})}', "azurerm_storage_account.x.name is not declared"),
        ('${format("%s", "x ${var.zone} y")}', "var.zone is not declared"),
        ("${frobnicate(local.host)}", "unknown function frobnicate()"),
    ],
)
def test_reader_reports_dangling_references(value, problem):
    assert undeclared({**DOCUMENT, "output": {"x": {"value": value}}})[0] == [f".output.x.value: {problem}"]


def test_reader_checks_depends_on():
    document = {**DOCUMENT, "resource": {**DOCUMENT["resource"], "databricks_notebook": {
        "nb": {"depends_on": ["databricks_job.train", "databricks_directory.gone"]}}}}
    assert undeclared(document)[0] == [
        ".resource.databricks_notebook.nb.depends_on: databricks_directory.gone is not declared"
    ]


def test_metadata_is_not_read_as_configuration():
    document = {**DOCUMENT, "//": {"metadata": {"note": "${nothing.here.at_all}"}}}
    assert undeclared(document) == ([], 0)


def test_a_cycle_is_detected():
    document = {"resource": {"a": {"x": {"v": "${b.y.id}"}}, "b": {"y": {"depends_on": ["a.x"]}}}}
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(dependency_graph(document)).static_order())


def test_unclosed_template_is_an_error():
    with pytest.raises(ValueError, match="unclosed"):
        list(templates("${local.host"))

