"""Lock files installed exactly, without a solve: the command each needs, made from the lock.

- ``uv.lock``: ``uv sync --frozen`` into the cached environment (``UV_PROJECT_ENVIRONMENT``), the
  locked set for the default groups as a plain ``uv sync --frozen`` installs it, workspace members
  (the project itself) left out: their code is on the run's sys.path (see :mod:`.pyprojects`).
- ``pylock.toml`` (PEP 751): ``uv pip install -r pylock.toml``; packages that are folders inside
  the repository (the project) are dropped from a copy of the lock first.
- ``poetry.lock``: the locked versions (with their hashes) written as a requirements file and
  installed with ``--no-deps``: each package exactly as locked, no resolution.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from packaging.markers import InvalidMarker, Marker
from packaging.utils import canonicalize_name

from ..errors import EnvBuildError
from . import pyprojects

_LOCK_HINT = "the lock file is not readable: make it again (uv lock, poetry lock, uv export)"


def uv_sync_argv(uv: str, project: Path, python: str) -> list[str]:
    """``uv sync --frozen`` of ``project`` into the environment UV_PROJECT_ENVIRONMENT names (uv
    makes the venv there with ``python``)."""
    return [
        uv, "sync", "--frozen", "--no-install-workspace", "--project", str(project),
        "--python", python, "--compile-bytecode", "--no-progress",
    ]  # fmt: skip


def installed(env_dir: Path) -> list[str]:
    """'name==version' of each distribution in the venv at ``env_dir``, read from its dist-info
    folders (what a freeze prints for packages installed from a lock, without a process)."""
    pins = []
    for info in env_dir.glob("lib/python*/site-packages/*.dist-info"):
        name, _, version = info.name.removesuffix(".dist-info").partition("-")
        pins.append(f"{canonicalize_name(name)}=={version}")
    return sorted(pins)


def pylock_file(lock: Path, repo: Path, scratch: Path) -> Path:
    """``lock``, or a copy in ``scratch`` without the packages that are folders inside ``repo``."""
    data = _toml(lock)
    packages = data.get("packages") or []
    drop = {i for i, pkg in enumerate(packages) if _inside(pkg.get("directory"), lock.parent, repo)}
    if not drop:
        return lock
    blocks = _package_blocks(lock.read_text())
    if len(blocks) != len(packages) + 1:
        raise EnvBuildError(f"{lock}: its [[packages]] tables are not all at the top", _LOCK_HINT)
    kept = [blocks[0]] + [b for i, b in enumerate(blocks[1:]) if i not in drop]
    scratch.mkdir(parents=True, exist_ok=True)
    out = scratch / "pylock.toml"
    out.write_text("".join(kept))
    return out


def _inside(directory: Any, base: Path, repo: Path) -> bool:
    if not isinstance(directory, dict) or not directory.get("path"):
        return False
    path, repo_path = os.path.abspath(base / str(directory["path"])), os.path.abspath(repo)
    return path == repo_path or path.startswith(repo_path + os.sep)


def _package_blocks(text: str) -> list[str]:
    """The text before the first ``[[packages]]``, then one chunk per package (its sub-tables
    included), with any top-level table after the last package kept in the head's place."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == "[[packages]]"]
    if not starts:
        return [text]
    blocks = ["".join(lines[: starts[0]])]
    tail: list[str] = []
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        chunk = lines[start:end]
        if n + 1 == len(starts):
            cut = next((j for j, line in enumerate(chunk) if j and _top_table(line)), len(chunk))
            chunk, tail = chunk[:cut], chunk[cut:]
        blocks.append("".join(chunk))
    blocks[0] += "".join(tail)  # (TOML tables after the packages may come first as well)
    return blocks


def _top_table(line: str) -> bool:
    stripped = line.strip()
    return stripped.startswith("[") and not re.match(r"^\[\[?packages[.\]]", stripped)


def poetry_requirements(
    lock: Path, scratch: Path, extras: Sequence[str] = (), groups: Sequence[str] = ()
) -> tuple[Path, list[str]]:
    """A requirements file in ``scratch`` pinning what ``poetry install`` would install from
    ``lock`` (the groups that are not optional, and ``groups``; the optional packages of
    ``extras``), and the names of folder packages left out."""
    data = _toml(lock)
    project = pyprojects.read(lock.parent)
    optional = pyprojects.optional_poetry_groups(project.data) if project else set()
    optional -= set(groups)
    table = data.get("extras") or {}
    wanted = {canonicalize_name(n) for e in extras for n in _poetry_extra(table, e, lock)}
    files = (data.get("metadata") or {}).get("files") or {}
    lines, folders = [], []
    for pkg in data.get("package") or []:
        among = _poetry_groups(pkg) - optional
        if not among or (pkg.get("optional") and canonicalize_name(pkg["name"]) not in wanted):
            continue
        source = pkg.get("source") or {}
        if source.get("type") in ("directory", "file") and not _is_wheel(source):
            folders.append(str(pkg["name"]))
            continue
        hashes = [
            f["hash"] for f in pkg.get("files") or files.get(pkg["name"]) or [] if "hash" in f
        ]
        lines.append((_pin(pkg, source, lock.parent) + _markers(pkg, among), hashes))
    hashed = all(h for _, h in lines)
    text = "".join(
        line + "".join(f" --hash={h}" for h in hs if hashed) + "\n" for line, hs in lines
    )
    scratch.mkdir(parents=True, exist_ok=True)
    out = scratch / "poetry-requirements.txt"
    out.write_text(text)
    return out, folders


def _poetry_extra(extras: dict[str, Any], name: str, lock: Path) -> list[str]:
    for key, names in extras.items():
        if canonicalize_name(key) == canonicalize_name(name):
            return [re.split(r"[\s\[(<>=!~;]", str(n), maxsplit=1)[0] for n in names]
    known = ", ".join(sorted(extras)) or "none"
    raise EnvBuildError(f"{lock.name} has no extra {name!r} (known: {known})", "name one of them")


def _poetry_groups(pkg: dict[str, Any]) -> set[str]:
    groups = pkg.get("groups") or [pkg.get("category", "main")]
    return {str(g) for g in groups}


def _is_wheel(source: dict[str, Any]) -> bool:
    return str(source.get("url", "")).endswith(".whl")


def _pin(pkg: dict[str, Any], source: dict[str, Any], folder: Path) -> str:
    name, kind = str(pkg["name"]), source.get("type")
    if kind == "git":
        ref = source.get("resolved_reference") or source.get("reference") or ""
        return f"{name} @ git+{source['url']}@{ref}"
    if kind == "url":
        return f"{name} @ {source['url']}"
    if kind == "file":
        return f"{name} @ {(folder / str(source['url'])).resolve().as_uri()}"
    return f"{name}=={pkg['version']}"


def _markers(pkg: dict[str, Any], groups: set[str]) -> str:
    markers = pkg.get("markers")
    if isinstance(
        markers, dict
    ):  # per group: the package is wanted where any chosen group wants it
        chosen = [str(markers[g]) for g in sorted(groups) if g in markers]
        if len(chosen) < len(groups):
            return ""
        markers = " or ".join(f"({m})" for m in chosen)
    if not markers:
        return ""
    try:
        Marker(str(markers))
    except InvalidMarker as exc:
        raise EnvBuildError(
            f"poetry.lock: {pkg['name']} has a bad marker: {exc}", _LOCK_HINT
        ) from None
    return f" ; {markers}"


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise EnvBuildError(f"{path.name} is not readable: {exc}", _LOCK_HINT) from None
