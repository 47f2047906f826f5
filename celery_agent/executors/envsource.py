"""Where a run's environment comes from, in this order (the first found wins):

1. the spec's ``requirements`` list, or its ``requirements_file`` (a path in the repository);
2. a lock file of the project: ``uv.lock``, ``pylock.toml``, ``poetry.lock``, installed exactly;
3. a ``pyproject.toml`` declaring a project, without a lock: its dependencies;
4. the ``requirements.txt`` nearest the entry: the entry's folder, then each parent up to the root;
5. nothing: an empty environment (the log says so).

The project (2, 3) is the nearest folder from the entry's up to the repository root that holds a
lock file or a pyproject.toml with a ``[project]`` (or ``[tool.poetry]``) table; a pyproject.toml
with tool settings only is not one. A script entry is a path from the repository root; a module
entry ('-m pkg.mod') is looked for under the spec's ``workdir``.

The source's ``sha256`` is the hash of what is installed (a lock file, a requirements file with
its includes): it goes into the environment's cache key, so an unchanged lock reuses its
environment in place and a changed one builds another. Whatever the source, the nearest project's
import root goes on the run's ``sys.path`` (see :mod:`.pyprojects` for why it is not installed).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..filestamps import FileMemo, Stamp
from ..spec import TaskSpec
from . import pyprojects, reqfiles
from .pyprojects import Project

#: lock files, in the order they are preferred when a project has several
LOCKS = ("uv.lock", "pylock.toml", "poetry.lock")


@dataclass(frozen=True)
class EnvSource:
    """What an environment is built from, and where that was found."""

    #: 'requirements', 'requirements_file', a lock's name, 'pyproject.toml', 'requirements.txt'
    kind: str = "none"
    rel: str | None = None  #: the file, relative to the repository root
    sha256: str | None = None  #: hash of the content installed (None for a requirement list)
    lines: tuple[str, ...] = ()  #: normalized requirements, when that is what is installed
    file: Path | None = None  #: the requirements or lock file handed to the installer
    project: Project | None = None  #: the nearest project (its import root goes on sys.path)
    extras: tuple[str, ...] = ()  #: the project's extras the installer is asked for
    #: projects in the checkout a requirements file installs ('-e .'): on sys.path instead, their
    #: dependencies installed in their place
    local: tuple[Project, ...] = ()
    groups: tuple[str, ...] = ()  #: dependency groups the installer is asked for

    def selection(self) -> list[str]:
        """Installer options choosing the extras and groups (uv's ``--extra``, ``--group``)."""
        return [f"--extra={e}" for e in self.extras] + [f"--group={g}" for g in self.groups]

    def __bool__(self) -> bool:
        return bool(self.lines) or self.file is not None

    @property
    def file_sha256(self) -> str | None:
        """The hash of the file handed to the installer as it is (None for requirement lines)."""
        return self.sha256 if self.file is not None else None

    @property
    def locked(self) -> bool:
        """Whether the source is a lock file (installed exactly, without a solve)."""
        return self.kind in LOCKS

    def describe(self) -> str:
        """For the run's log and record: 'uv.lock (sha256 1a2b3c4d5e6f)', 'none (...)'."""
        if self.kind == "none":
            return "none (no requirements, lock file, pyproject.toml or requirements.txt found)"
        if self.kind == "requirements":
            return f"the spec's requirements ({len(self.lines)})"
        where = self.rel or self.kind
        name = (
            where
            if where.endswith(self.kind) or self.kind == "requirements_file"
            else f"{where} ({self.kind})"
        )
        return f"{name} (sha256 {(self.sha256 or '')[:12]})"

    def key_parts(self) -> dict[str, Any]:
        """What this source adds to an environment's cache key beyond the requirement lines."""
        if self.lines or not self:
            return {}
        parts: dict[str, Any] = {"requirements_file": self.sha256}
        if self.kind not in ("requirements_file", "requirements.txt"):
            parts |= {
                "lock": self.kind,
                "extras": sorted(self.extras),
                "groups": sorted(self.groups),
            }
        return parts

    def pythonpath(self) -> str | None:
        """The folder to put on the run's sys.path for the project's own packages, if any."""
        roots = [p.import_root for p in (self.project, *self.local) if p is not None]
        return os.pathsep.join(dict.fromkeys(str(root) for root in roots)) or None

    def requirements_text(self) -> str:
        """The requirements file to install when it names projects of the checkout: without
        those lines, with their dependencies (see :attr:`local`)."""
        assert self.file is not None
        found = reqfiles.read(self.file)
        folders = tuple(p.folder.resolve() for p in self.local)
        return reqfiles.rewritten(found, folders, _local_requirements(self.local))


def resolve(spec: TaskSpec, root: Path | str, *, locks: bool = True) -> EnvSource:
    """The source of ``spec``'s environment in the checkout at ``root`` (see the module's order).

    Without ``locks`` lock files are passed over (an installer that cannot read them). Paths are
    strings here: this runs on every prepare, cache hits included.
    """
    top = os.path.abspath(root)
    folders = list(_upward(entry_folder(spec, top), top))
    project = next((p for p in map(pyprojects.read, folders) if p is not None), None)
    found = _find(spec, top, folders, project, locks)
    if (spec.extras or spec.groups) and found.kind not in _PROJECT_KINDS:
        raise SpecError(
            "extras and groups choose from a project's lock file or pyproject.toml, and this "
            f"environment comes from {found.describe()}",
            "drop extras and groups, or run from a project (a pyproject.toml with [project])",
        )
    return found


#: the sources that come from a project, where extras and groups can be chosen
_PROJECT_KINDS = (*LOCKS, "pyproject.toml")


def _find(
    spec: TaskSpec, root: str, folders: list[str], project: Project | None, locks: bool
) -> EnvSource:
    if spec.requirements is not None:
        return _listed(tuple(spec.requirements), project)
    if spec.requirements_file:
        path = os.path.join(root, spec.requirements_file)
        return _from_file("requirements_file", path, root, project)
    for folder in folders:
        found = _project_source(folder, root, locks, spec)
        if found is not None:
            return found
    for folder in folders:
        path = os.path.join(folder, "requirements.txt")
        if os.path.isfile(path):
            return _from_file("requirements.txt", path, root, project)
    return EnvSource("none", project=project)


def entry_folder(spec: TaskSpec, root: Path | str) -> str:
    """The folder the entry lives in: a script's (a path from the root); for '-m pkg.mod', pkg's
    folder under ``workdir`` (where the run starts, so where Python finds the module) if any."""
    if not spec.module:
        return os.path.dirname(os.path.join(root, spec.entry))
    base = os.path.join(root, spec.workdir) if spec.workdir else str(root)
    parts = spec.module.split(".")[:-1]
    while parts and not os.path.isdir(os.path.join(base, *parts)):
        parts.pop()
    return os.path.join(base, *parts)


def _upward(start: str, root: str) -> Iterator[str]:
    """``start`` and each parent up to ``root`` (only ``root`` when ``start`` is outside it)."""
    root, folder = os.path.normpath(root), os.path.normpath(start)
    if folder != root and not folder.startswith(root + os.sep):
        yield root
        return
    while True:
        yield folder
        if folder == root:
            return
        folder = os.path.dirname(folder)


def _project_source(folder: str, root: str, locks: bool, spec: TaskSpec) -> EnvSource | None:
    project = pyprojects.read(folder)
    chosen = EnvSource(extras=tuple(spec.extras), groups=tuple(spec.groups), project=project)
    for name in LOCKS if locks else ():
        path = os.path.join(folder, name)
        digest = _HASHES.get(path)
        if digest is not None:
            rel = _rel(path, root)
            return replace(chosen, kind=name, rel=rel, sha256=digest, file=Path(path))
    if project is None:
        return None
    path = os.path.join(folder, "pyproject.toml")
    rel = _rel(path, root)
    if project.dependencies is None:  # dynamic: the build backend says what they are
        digest = _HASHES.get(path)
        return replace(chosen, kind="pyproject.toml", rel=rel, sha256=digest, file=Path(path))
    if "project" not in project.data and (spec.extras or spec.groups):
        raise SpecError(
            f"{rel} declares a poetry project without a lock: its extras and groups are read "
            "from its poetry.lock",
            "run poetry lock and commit poetry.lock, or drop extras and groups",
        )
    lines = _listed_lines(
        project.dependencies + pyprojects.chosen(project, spec.extras, spec.groups)
    )
    return EnvSource("pyproject.toml", rel, _lines_hash(lines), lines, project=project)


def _from_file(kind: str, path: str, root: str, project: Project | None) -> EnvSource:
    found = reqfiles.read(Path(path))
    rel = _rel(path, root)
    if found.lines:
        return EnvSource(kind, rel, found.sha256, found.lines, project=project)
    local = tuple(p for p in map(pyprojects.read, _inside(found.local, root)) if p is not None)
    local = tuple(p for p in local if p.dependencies is not None)
    digest = found.sha256
    if local:  # what is installed in their place is their dependencies
        digest = _lines_hash((digest, *_local_requirements(local)))
    file = found.path if found else None
    return EnvSource(kind, rel, digest, file=file, project=project, local=local)


def _inside(folders: tuple[Path, ...], root: str) -> list[str]:
    top = os.path.realpath(root)
    real = (os.path.realpath(folder) for folder in folders)
    return [f for f in real if f == top or f.startswith(top + os.sep)]


def _local_requirements(local: tuple[Project, ...]) -> tuple[str, ...]:
    return tuple(dep for p in local for dep in p.dependencies or ())


@functools.lru_cache(maxsize=256)
def _listed_lines(lines: tuple[str, ...]) -> tuple[str, ...]:
    return reqfiles.normalize(lines)


@functools.lru_cache(maxsize=256)
def _lines_hash(lines: tuple[str, ...]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _listed(lines: tuple[str, ...], project: Project | None) -> EnvSource:
    """A spec's requirement list, normalized once per distinct list (specs repeat them)."""
    return EnvSource("requirements", lines=_listed_lines(lines), project=project)


def _rel(path: str, root: str) -> str:
    """``path`` from ``root`` with '/' separators (as it is when it lies outside ``root``)."""
    path, root = os.path.normpath(path), os.path.normpath(root)
    if path.startswith(root + os.sep):
        return path[len(root) + 1 :].replace(os.sep, "/")
    return path


def _sha256(path: str, stamp: Stamp) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: file hashes by path, computed again whenever a file's stamp changes
_HASHES: FileMemo[str] = FileMemo(_sha256)
