"""The layout of `deploy/` is its architecture: imports run only downwards, never to a sibling's private names.

Layers, top to bottom: the commands and the notebook runtime (modules directly in `deploy/`), the
concerns (`release/`, `identity/`, `training/`, `scoring/`, `monitoring/`), `platform/`, `core/`.
A module may import its own layer's public names and anything below; nothing imports upwards.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEPLOY = PROJECT_ROOT / "deploy"
CONCERNS = ("release", "identity", "training", "scoring", "monitoring")
RANK = {"core": 0, "platform": 1, **dict.fromkeys(CONCERNS, 2), "top": 3}


def folder_of(module: str) -> str:
    """The layer a dotted module name (deploy.x.y) belongs to: its concern folder, or "top"."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in RANK and (DEPLOY / parts[1] / "__init__.py").exists():
        return parts[1]
    return "top"


def module_name(path: Path) -> str:
    relative = path.relative_to(PROJECT_ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import of a deploy module in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deploy"):
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, [], node.lineno) for alias in node.names if alias.name.startswith("deploy"))
    return found


MODULES = sorted(path for path in DEPLOY.rglob("*.py") if "__pycache__" not in path.parts)


def test_the_concern_folders_exist() -> None:
    assert {"core", "platform", "release", "identity", "training"} <= {
        path.parent.name for path in DEPLOY.glob("*/__init__.py")
    }
    assert (DEPLOY / "release" / "targets" / "__init__.py").exists()


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.relative_to(PROJECT_ROOT).as_posix())
def test_imports_run_downwards(path: Path) -> None:
    importer = module_name(path)
    layer = folder_of(importer)
    for imported, names, line in imports_of(path):
        targets = [imported] if imported != "deploy" else [f"deploy.{name}" for name in names]
        for target in targets:
            target_layer = folder_of(target)
            where = f"{path.relative_to(PROJECT_ROOT)}:{line} imports {target}"
            assert RANK[target_layer] <= RANK[layer], f"{where}: from {layer} up to {target_layer}"
            if target_layer != layer or layer == "top":
                continue
            # Within one layer, a concern may use a sibling concern's public names only.
            own = importer.split(".")[1]
            other = target.split(".")[1]
            if own != other:
                private = [name for name in names if name.startswith("_")]
                assert not private, f"{where}: a sibling's private names {private}"


def test_no_circle_between_sibling_concerns() -> None:
    """A concern may use a sibling's public names, but two concerns never use each other: one sits above."""
    uses: dict[str, set[str]] = {concern: set() for concern in CONCERNS}
    for path in MODULES:
        own = folder_of(module_name(path))
        if own not in uses:
            continue
        for imported, names, _ in imports_of(path):
            for target in [imported] if imported != "deploy" else [f"deploy.{name}" for name in names]:
                other = folder_of(target)
                if other in uses and other != own:
                    uses[own].add(other)

    def reaches(start: str, goal: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(step == goal or (step not in seen and reaches(step, goal, seen | {step})) for step in uses[start])

    circles = sorted(f"{concern} -> {other} -> ... -> {concern}"
                     for concern in CONCERNS for other in uses[concern] if reaches(other, concern))
    assert not circles, f"concerns that use each other: {circles}"
