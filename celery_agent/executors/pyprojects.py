"""A repository's Python project: its pyproject.toml, dependencies and import root.

The project's own code is not installed into a cached environment: an environment is keyed by what
it holds (a lock file's hash), and a copy of the project's code in it would go stale with the next
commit while the lock stays the same; an editable install would point into one run's worktree. The
run gets the project's import root on ``sys.path`` instead (``src/`` in a src layout, else the
project folder), so ``import mypkg`` finds this run's code from any entry, at no install cost.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..filestamps import FileMemo, Stamp


@dataclass(frozen=True)
class Project:
    """A pyproject.toml that declares a project ([project] or [tool.poetry])."""

    folder: Path
    name: str
    dependencies: tuple[str, ...] | None  #: None when they are dynamic (computed by the backend)
    import_root: Path  #: the folder put on sys.path for the project's own packages
    data: dict[str, Any] = field(compare=False)  #: the parsed pyproject.toml


def read(folder: Path | str) -> Project | None:
    """The project declared by ``folder/pyproject.toml``, or None (no file, or tool settings only)."""
    return _PROJECTS.get(os.path.join(folder, "pyproject.toml"))


def _parse(path: str, stamp: Stamp) -> Project | None:
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"{path} is not valid TOML: {exc}", "fix the file") from None
    project, poetry = data.get("project"), data.get("tool", {}).get("poetry")
    if not isinstance(project, dict) and not isinstance(poetry, dict):
        return None
    folder = Path(path).parent
    table = project if isinstance(project, dict) else poetry or {}
    name = str(table.get("name") or folder.name)
    return Project(folder, name, _dependencies(project, poetry), import_root(folder, data), data)


_PROJECTS: FileMemo[Project | None] = FileMemo(_parse)


def _dependencies(project: Any, poetry: Any) -> tuple[str, ...] | None:
    if isinstance(project, dict):
        if "dependencies" in (project.get("dynamic") or []):
            return None
        return tuple(str(dep) for dep in project.get("dependencies") or [])
    deps = (poetry or {}).get("dependencies") or {}
    return tuple(_poetry_requirement(n, v) for n, v in deps.items() if n.lower() != "python")


def _poetry_requirement(name: str, value: Any) -> str:
    """A [tool.poetry.dependencies] entry as a requirement ('^1.2' means >=1.2,<2)."""
    version = value.get("version", "*") if isinstance(value, dict) else str(value)
    return name + _poetry_constraint(version)


def _poetry_constraint(version: str) -> str:
    version = version.strip()
    if version in ("", "*"):
        return ""
    if version[0] in "^~" and version[1:2] != "=":
        parts = [int(p) if p.isdigit() else 0 for p in version[1:].split(".")]
        if version[0] == "~":
            index = min(1, len(parts) - 1)
        else:  # caret: the first part that is not zero may not change
            index = next((i for i, p in enumerate(parts) if p), len(parts) - 1)
        upper = [*parts[:index], parts[index] + 1]
        return f">={version[1:]},<{'.'.join(str(p) for p in upper)}"
    return f"=={version}" if version[0].isdigit() else version


def import_root(folder: Path, data: dict[str, Any]) -> Path:
    """Where the project's packages are imported from: a declared package folder, ``src/`` when
    the project has a src layout, else the project folder."""
    tool = data.get("tool") or {}
    declared = (tool.get("setuptools") or {}).get("package-dir", {}).get("")
    if isinstance(declared, str):
        return folder / declared
    for entry in (tool.get("poetry") or {}).get("packages") or []:
        if isinstance(entry, dict) and entry.get("from"):
            return folder / str(entry["from"])
    wheel = ((tool.get("hatch") or {}).get("build") or {}).get("targets", {}).get("wheel", {})
    for package in wheel.get("packages") or []:
        parent = Path(str(package)).parent
        return folder / parent
    return folder / "src" if (folder / "src").is_dir() else folder


def chosen(project: Project, extras: Sequence[str], groups: Sequence[str]) -> tuple[str, ...]:
    """The requirements ``extras`` and dependency ``groups`` add to a [project]'s dependencies
    (groups may include other groups); SpecError naming the known ones for an unknown name."""
    table = project.data.get("project") or {}
    optional = table.get("optional-dependencies") or {}
    declared = project.data.get("dependency-groups") or {}
    lines: list[str] = []
    for extra in extras:
        lines += [str(dep) for dep in _known(optional, extra, "extra", project)]
    for group in groups:
        lines += _group(declared, group, project, seen=set())
    return tuple(lines)


def _group(declared: dict[str, Any], name: str, project: Project, seen: set[str]) -> list[str]:
    if name in seen:
        return []
    seen.add(name)
    lines: list[str] = []
    for item in _known(declared, name, "dependency group", project):
        if isinstance(item, dict) and "include-group" in item:
            lines += _group(declared, str(item["include-group"]), project, seen)
        else:
            lines.append(str(item))
    return lines


def _known(table: dict[str, Any], name: str, what: str, project: Project) -> list[Any]:
    for key, value in table.items():
        if _canonical(key) == _canonical(name):
            return list(value or [])
    known = ", ".join(sorted(table)) or "none"
    raise SpecError(
        f"{what} {name!r} is not declared in {project.folder / 'pyproject.toml'} (known: {known})",
        f"name one of its {what}s, or add it to pyproject.toml",
    )


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def optional_poetry_groups(data: dict[str, Any]) -> set[str]:
    """The dependency groups a plain ``poetry install`` leaves out (``optional = true``)."""
    groups = ((data.get("tool") or {}).get("poetry") or {}).get("group") or {}
    return {
        name for name, group in groups.items() if isinstance(group, dict) and group.get("optional")
    }
