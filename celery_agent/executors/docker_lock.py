"""Lock files for docker runs: the locked set, pinned, installed in the container without a solve.

The container's installer may be pip, which reads none of the lock formats, so the worker turns
the lock into a pinned requirements file first and the container installs it with ``--no-deps``
(each package exactly as locked, markers evaluated in the container):

- ``uv.lock``: ``uv export --frozen --no-emit-workspace`` for the chosen extras and groups (what
  ``uv sync --frozen --no-install-workspace`` installs in a venv run), hashes kept;
- ``pylock.toml``: each package's pinned version (its hashes, its marker), folder packages inside
  the repository (the project) left out;
- ``poetry.lock``: :func:`.lockfiles.poetry_requirements`.

Wheels a lock takes from a local folder (a ``uv lock --find-links`` registry, a pylock wheel
path) are found through that folder, mounted read-only as a find-links folder. The project's own
code is not installed: it is on the run's PYTHONPATH, as for every docker run.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

from ..errors import EnvBuildError
from . import lockfiles
from .envsource import EnvSource
from .steps import LogFn, clean_env

_HINT = "check that the lock file is current (lock it again)"


def pinned(reqs: EnvSource, repo: Path, scratch: Path, log: LogFn) -> Path:
    """A requirements file in ``scratch`` pinning the set ``reqs``'s lock file installs."""
    lock = reqs.file
    assert lock is not None and reqs.locked
    scratch.mkdir(parents=True, exist_ok=True)
    if reqs.kind == "poetry.lock":
        out, folders = lockfiles.poetry_requirements(lock, scratch, reqs.extras, reqs.groups)
        if folders:
            log(f"env: poetry.lock folders left to sys.path: {', '.join(folders)}")
        return out
    out = scratch / "locked-requirements.txt"
    if reqs.kind == "uv.lock":
        out.write_text(_uv_export(lock, reqs.selection()))
    else:
        out.write_text(_pylock_lines(lock, repo))
    return out


def local_folders(reqs: EnvSource) -> list[str]:
    """The host folders a lock takes wheels from (find-links folders for the container)."""
    lock = reqs.file
    if lock is None or reqs.kind not in ("uv.lock", "pylock.toml"):
        return []
    data = _toml(lock)
    found: list[str] = []
    if reqs.kind == "uv.lock":
        for pkg in data.get("package") or []:
            registry = (pkg.get("source") or {}).get("registry")
            if isinstance(registry, str) and "://" not in registry:
                found.append(os.path.normpath(lock.parent / registry))
    else:
        for pkg in data.get("packages") or []:
            for wheel in pkg.get("wheels") or []:
                if wheel.get("path") and not wheel.get("url"):
                    found.append(os.path.dirname(os.path.normpath(lock.parent / wheel["path"])))
    return [f for f in dict.fromkeys(found) if os.path.isdir(f)]


def _uv_export(lock: Path, selection: list[str]) -> str:
    from .venv import uv_binary  # (venv imports this module's neighbours)

    uv = uv_binary()
    if uv is None:
        raise EnvBuildError(
            "uv.lock is exported with uv, which is not installed on this worker", "pip install uv"
        )
    argv = [
        uv, "export", "--frozen", "--no-emit-workspace", "--format", "requirements-txt",
        "--no-header", "--quiet", "--project", str(lock.parent), *selection,
    ]  # fmt: skip
    env = clean_env() | {"UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-10:])
        raise EnvBuildError(f"uv export of {lock} failed (exit {done.returncode}):\n{tail}", _HINT)
    return done.stdout


def _pylock_lines(lock: Path, repo: Path) -> str:
    lines: list[str] = []
    for pkg in _toml(lock).get("packages") or []:
        line = _pylock_pin(pkg, lock.parent, repo)
        if line is None:
            continue
        marker = pkg.get("marker")
        lines.append(line + (f" ; {marker}" if marker else "") + _hashes(pkg, line))
    return "".join(f"{line}\n" for line in lines)


def _pylock_pin(pkg: dict[str, Any], base: Path, repo: Path) -> str | None:
    name = str(pkg["name"])
    directory = pkg.get("directory")
    if isinstance(directory, dict):
        path = os.path.abspath(base / str(directory.get("path", "")))
        top = os.path.abspath(repo)
        if path == top or path.startswith(top + os.sep):
            return None  # the project: its code is on PYTHONPATH
        raise EnvBuildError(f"pylock.toml: {name} is a folder outside the repository", _HINT)
    vcs = pkg.get("vcs")
    if isinstance(vcs, dict):
        return f"{name} @ git+{vcs['url']}@{vcs.get('commit-id', '')}"
    archive = pkg.get("archive")
    if isinstance(archive, dict) and archive.get("url"):
        return f"{name} @ {archive['url']}"
    if not pkg.get("version"):
        raise EnvBuildError(f"pylock.toml: {name} has no version to pin", _HINT)
    return f"{name}=={pkg['version']}"


def _hashes(pkg: dict[str, Any], pin: str) -> str:
    """' --hash=sha256:...' for each of a pinned package's files, when all of them have one."""
    files = [*(pkg.get("wheels") or []), *([pkg["sdist"]] if pkg.get("sdist") else [])]
    hashes = [(f.get("hashes") or {}).get("sha256") for f in files]
    if " @ " in pin or not hashes or not all(hashes):
        return ""
    return "".join(f" --hash=sha256:{h}" for h in hashes)


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise EnvBuildError(f"{path.name} is not readable: {exc}", _HINT) from None
