"""The package's layers, as docs/ARCHITECTURE.md's table names them: no module in celery_agent/
imports from a layer above its own (function-level imports count; ``if TYPE_CHECKING:`` imports
name types only and do not)."""

from __future__ import annotations

import ast
import fnmatch
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "celery_agent"
DOC = ROOT / "docs" / "ARCHITECTURE.md"
HEADER = "| layer | modules | may import |"


def layer_table(text: str) -> dict[str, tuple[int, str]]:
    """Module name or pattern -> (rank, layer name), from the table that starts with HEADER."""
    lines = text.splitlines()
    start = lines.index(HEADER) + 2  # (the header, then the |---| line)
    table: dict[str, tuple[int, str]] = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        layer, modules = (cell.strip() for cell in line.strip("|").split("|")[:2])
        rank, _, name = layer.partition(" ")
        for module in re.findall(r"`([^`]+)`", modules):
            assert module not in table, f"{module} is in two layers of {DOC.name}"
            table[module] = (int(rank), name)
    return table


def package_modules() -> dict[str, Path]:
    """Dotted name (relative to the package; ``celery_agent`` for the package) -> file."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts) or "celery_agent"] = path
    return found


def layer_of(module: str, table: Mapping[str, tuple[int, str]]) -> tuple[int, str] | None:
    """The layer the table gives ``module``: by its name, else by the first pattern it fits."""
    if module in table:
        return table[module]
    for pattern, layer in table.items():
        if "*" in pattern and fnmatch.fnmatchcase(module, pattern):
            return layer
    return None


def imports(path: Path, module: str, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, module of the package) for every run-time import in ``path``."""
    is_package = path.name == "__init__.py"
    here = [] if module == "celery_agent" else module.split(".")
    base_parts = here if is_package else here[:-1]
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module else []
        else:
            up = base_parts[: len(base_parts) - node.level + 1]
            stem = ".".join(["celery_agent", *up, *([node.module] if node.module else [])])
            names = [f"{stem}.{a.name}" for a in node.names]
        for name in names:
            target = _owner(name, known)
            if target is not None and target != module:
                yield node.lineno, target


def _owner(name: str, known: set[str]) -> str | None:
    """The package module ``name`` (a module, or a name inside one) belongs to."""
    if name != "celery_agent" and not name.startswith("celery_agent."):
        return None
    parts = name.split(".")[1:]
    while parts:
        if ".".join(parts) in known:
            return ".".join(parts)
        parts.pop()
    return "celery_agent"


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from (n for child in node.orelse for n in _runtime_nodes(_wrap(child)))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _runtime_nodes(node)


def _wrap(node: ast.stmt) -> ast.Module:
    return ast.Module(body=[node], type_ignores=[])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def upward_imports(modules: Mapping[str, Path], table: Mapping[str, tuple[int, str]]) -> list[str]:
    """One line per import of a module from a layer above its own."""
    known, found = set(modules), []
    for module, path in modules.items():
        mine = layer_of(module, table)
        for line, target in imports(path, module, known):
            theirs = layer_of(target, table)
            if mine is not None and theirs is not None and theirs[0] > mine[0]:
                found.append(f"{_shown(path)}:{line} ({mine[1]}) imports {target} ({theirs[1]})")
    return found


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def test_every_module_has_a_layer():
    table = layer_table(DOC.read_text())
    missing = [m for m in package_modules() if layer_of(m, table) is None]
    assert not missing, (
        f"modules with no layer: {missing}; add each to the layer table in docs/ARCHITECTURE.md"
    )


def test_every_name_in_the_layer_table_is_a_module():
    modules = package_modules()
    for entry in layer_table(DOC.read_text()):
        fits = [m for m in modules if m == entry or fnmatch.fnmatchcase(m, entry)]
        assert fits, f"{entry} in docs/ARCHITECTURE.md's layer table is no module of the package"


def test_no_module_imports_from_a_layer_above_its_own():
    found = upward_imports(package_modules(), layer_table(DOC.read_text()))
    assert not found, (
        "imports against the layering of docs/ARCHITECTURE.md (pass what a lower module needs in "
        "from an entry point, or move the code to the layer it belongs to):\n" + "\n".join(found)
    )


def test_the_check_finds_an_upward_import_and_ignores_type_only_ones(tmp_path):
    low, high = tmp_path / "low.py", tmp_path / "high.py"
    low.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .high import T\n"
        "def f():\n    from . import high\n"
    )
    high.write_text("from .low import f\n")
    table = {"low": (1, "core"), "high": (2, "store")}
    found = upward_imports({"low": low, "high": high}, table)
    assert len(found) == 1 and "low.py:5 (core) imports high (store)" in found[0]
