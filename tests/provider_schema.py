"""The providers' own schemas, read from the jsii assemblies the prebuilt provider packages ship.

Each package (cdktn_provider_azurerm, _azuread, _databricks) carries `_jsii/<name>@<version>.jsii.tgz`, whose
`package/.jsii` (JSON, or a redirect to a gzipped copy) lists every resource, data source and provider class
with its config struct. A struct's properties are the block's arguments (`optional` marks the ones Terraform
does not require), and a property whose type is another struct is a nested block. Each property's docs link
to the registry page of its Terraform name (`...key_vault#rbac_authorization_enabled KeyVault#...`), which
is how the camelCase property maps back to snake_case exactly, renamed properties (`systemAttribute` for
`system`) included. A class's own properties (the getters) are the attributes a reference may read.

`check_document` compares one synthesized cdk.tf.json against them: unknown arguments, missing required
ones (nested blocks too) and references to attributes that do not exist.
"""

from __future__ import annotations

import gzip
import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.test_synth_references import found_in

# `{@link https://registry.terraform.io/.../docs/resources/key_vault azurerm_key_vault}` on a class, and
# `{@link https://.../key_vault#tenant_id KeyVault#tenant_id}` on a property.
CLASS_LINK = re.compile(r"\{@link \S+ ([\w-]+)\}")
PROPERTY_LINK = re.compile(r"\{@link \S+#\w+ \w+#(\w+)\}")
BLOCK_KINDS = {"cdktn.TerraformResource": "resource", "cdktn.TerraformDataSource": "data",
               "cdktn.TerraformProvider": "provider"}
# Terraform's meta-arguments, which every resource and data source accepts (cdktn adds "//" metadata).
META_ARGUMENTS = frozenset({"//", "count", "for_each", "depends_on", "provider", "lifecycle", "connection",
                            "provisioner"})
PROVIDER_META_ARGUMENTS = frozenset({"alias"})


@dataclass
class Block:
    """A resource, data source, provider or nested block: its arguments, and the attributes it exposes."""

    arguments: dict[str, Argument] = field(default_factory=dict)
    attributes: set[str] = field(default_factory=set)

    @property
    def required(self) -> set[str]:
        return {name for name, argument in self.arguments.items() if argument.required}


@dataclass
class Argument:
    required: bool
    block: Block | None = None  # a nested block's own schema; None for a plain value (maps included)


class Assembly:
    """One provider package's assembly, indexed by Terraform type: ("resource", "azurerm_key_vault") etc."""

    def __init__(self, document: dict[str, Any]):
        self._types: dict[str, Any] = document["types"]
        self._structs: dict[str, Block] = {}
        self._blocks: dict[tuple[str, str], Block] = {}
        self.classes: dict[tuple[str, str], dict[str, Any]] = {}
        for spec in self._types.values():
            kind = BLOCK_KINDS.get(spec.get("base", ""))
            if kind is not None:
                self.classes[(kind, CLASS_LINK.search(spec["docs"]["summary"]).group(1))] = spec

    def block(self, kind: str, name: str) -> Block | None:
        """The schema of one resource ("resource"), data source ("data") or provider type, built when first asked."""
        if (kind, name) not in self._blocks and (kind, name) in self.classes:
            self._blocks[(kind, name)] = self._block(self.classes[(kind, name)])
        return self._blocks.get((kind, name))

    @classmethod
    def from_package(cls, package: Path) -> Assembly:
        (archive,) = sorted((package / "_jsii").glob("*.jsii.tgz"))
        with tarfile.open(archive) as tar:
            document = json.load(tar.extractfile("package/.jsii"))
            if document.get("schema") == "jsii/file-redirect":  # a compressed assembly points at its .gz copy
                compressed = tar.extractfile(f"package/{document['filename']}").read()
                document = json.loads(gzip.decompress(compressed) if document.get("compression") == "gzip"
                                      else compressed)
        return cls(document)

    def _block(self, spec: dict[str, Any]) -> Block:
        config_fqn = next(p["type"]["fqn"] for p in spec["initializer"]["parameters"] if p["name"] == "config")
        block = Block(arguments=dict(self._struct(config_fqn).arguments))
        own = [p for p in spec.get("properties", []) if not p.get("static")]
        names = {camel: tf for camel, tf in self._struct_names(config_fqn)}
        block.attributes = {names.get(p["name"], snake(p["name"])) for p in own if not p["name"].endswith("Input")}
        return block

    def _struct(self, fqn: str) -> Block:
        """A config struct's arguments, its own and those of the structs it extends within this assembly."""
        if fqn not in self._structs:
            block = self._structs[fqn] = Block()  # registered first: a recursive block refers to itself
            for prop in self._struct_properties(fqn):
                nested = struct_in(prop["type"])
                block.arguments[terraform_name(prop)] = Argument(
                    required=not prop.get("optional", False),
                    block=self._struct(nested) if nested in self._types else None,
                )
            block.attributes = set(block.arguments)
        return self._structs[fqn]

    def _struct_properties(self, fqn: str) -> Iterator[dict[str, Any]]:
        spec = self._types[fqn]
        for parent in spec.get("interfaces", []):
            if parent in self._types:  # cdktn.TerraformMetaArguments lives in cdktn: the meta-arguments
                yield from self._struct_properties(parent)
        yield from spec.get("properties", [])

    def _struct_names(self, fqn: str) -> Iterator[tuple[str, str]]:
        return ((prop["name"], terraform_name(prop)) for prop in self._struct_properties(fqn))


def terraform_name(prop: dict[str, Any]) -> str:
    """The Terraform name of a struct property: from its registry link, else from its camelCase name."""
    docs = prop.get("docs", {})
    found = PROPERTY_LINK.search(" ".join(str(docs.get(key, "")) for key in ("summary", "remarks")))
    return found.group(1) if found else snake(prop["name"])


def snake(camel: str) -> str:
    """camelCase to snake_case, for the computed attributes no registry link names (`isALegacyRule` ->
    `is_a_legacy_rule`). Digits stay with the word before them, which is right for every attribute the
    stacks reference, though not for every name a provider has (`kerberos_5i_...`)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", camel).lower()


def struct_in(type_ref: dict[str, Any]) -> str | None:
    """The struct a property's type names: itself, a list of it, or either in a union with IResolvable."""
    if "fqn" in type_ref:
        return None if type_ref["fqn"].startswith("cdktn.") else type_ref["fqn"]
    if "collection" in type_ref:
        collection = type_ref["collection"]
        return struct_in(collection["elementtype"]) if collection["kind"] == "array" else None
    if "union" in type_ref:
        found = [struct for member in type_ref["union"]["types"] if (struct := struct_in(member))]
        return found[0] if len(found) == 1 else None
    return None


class Schemas:
    """Every provider's blocks, for checking synthesized documents."""

    def __init__(self, assemblies: Iterable[Assembly]):
        self._assemblies = list(assemblies)

    def block(self, kind: str, name: str) -> Block | None:
        return next((found for assembly in self._assemblies if (found := assembly.block(kind, name))), None)

    def check_document(self, document: dict[str, Any]) -> list[str]:
        """Every problem in one synthesized stack, as `<where>: <what>` lines."""
        problems: list[str] = []
        for kind in ("resource", "data"):
            for type_name, instances in document.get(kind, {}).items():
                schema = self.block(kind, type_name)
                for name, body in instances.items():
                    where = f"{kind}.{type_name}.{name}"
                    if schema is None:
                        problems.append(f"{where}: no provider defines {kind} type {type_name}")
                        continue
                    problems += check_block(where, body, schema, META_ARGUMENTS)
        for type_name, configurations in document.get("provider", {}).items():
            schema = self.block("provider", type_name)
            if schema is None:
                problems.append(f"provider.{type_name}: no such provider")
                continue
            for position, body in enumerate(configurations):
                problems += check_block(f"provider.{type_name}[{position}]", body, schema, PROVIDER_META_ARGUMENTS)
        problems += self._check_references(document)
        return problems

    def _check_references(self, document: dict[str, Any]) -> list[str]:
        problems = []
        for kind in ("resource", "data", "output", "locals", "provider"):
            for where, reference_kind, name in found_in({kind: document.get(kind, {})}):
                if reference_kind != "ref":
                    continue
                problem = self._attribute_problem(where, name)
                if problem:
                    problems.append(f"{where}: {problem}")
        return problems

    def _attribute_problem(self, where: str, reference: str) -> str | None:
        parts = re.split(r"\.|\[", reference)
        if parts[0] == "self":  # a condition of the block it sits in: .data.<type>.<name>.lifecycle...
            _, kind, type_name, *_ = where.split(".")
            kind, attribute = kind, parts[1] if len(parts) > 1 else None
        elif parts[0] == "data":
            kind, type_name, attribute = "data", parts[1], parts[3] if len(parts) > 3 else None
        elif parts[0] in ("var", "local", "module", "path", "terraform", "each", "count"):
            return None
        else:
            kind, type_name, attribute = "resource", parts[0], parts[2] if len(parts) > 2 else None
        schema = self.block(kind, type_name)
        if schema is None:
            return f"{reference} names {kind} type {type_name}, which no provider defines"
        if attribute is not None and attribute not in schema.attributes | set(schema.arguments):
            return f"{reference}: {type_name} has no attribute {attribute}"
        return None


def check_block(where: str, body: dict[str, Any], schema: Block, meta: frozenset[str] = frozenset()) -> list[str]:
    """Unknown and missing arguments of one block, and recursively of its nested blocks."""
    problems = [f"{where}: unknown argument {key}" for key in body if key not in schema.arguments and key not in meta]
    problems += [f"{where}: missing required argument {key}" for key in sorted(schema.required - set(body))]
    for key, value in body.items():
        nested = schema.arguments.get(key)
        if nested is None or nested.block is None:
            continue
        for position, item in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(item, dict):
                suffix = f"[{position}]" if isinstance(value, list) else ""
                problems += check_block(f"{where}.{key}{suffix}", item, nested.block)
    return problems
