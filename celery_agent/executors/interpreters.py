"""Python interpreters on this machine: the worker's own, one by version, one by path."""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import EnvBuildError
from .steps import clean_env, clean_env_key

logger = logging.getLogger(__name__)

_VERSION = re.compile(r"^\d+(\.\d+){0,2}$")


@dataclass(frozen=True)
class Interpreter:
    """A Python interpreter found on this machine."""

    path: str  #: absolute path to invoke it by
    version: str  #: its full sys.version

    @property
    def short_version(self) -> str:
        """'3.11.7' from the full version text."""
        return self.version.split()[0]


def base_interpreter() -> str:
    """The worker's base interpreter by real path (not the python of the venv the worker runs in)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return str(Path(base).resolve())


def probe(path: str) -> Interpreter | None:
    """Ask the interpreter at ``path`` for its real executable and version; None if it cannot run."""
    return _probe(path, clean_env_key())


@functools.lru_cache(maxsize=64)
def _probe(path: str, _env_key: str) -> Interpreter | None:
    argv = [path, "-I", "-c", "import sys; print(sys.executable); print(sys.version)"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=clean_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.debug("interpreter %s did not run: %s", path, exc)
        return None
    lines = done.stdout.splitlines()
    if done.returncode != 0 or len(lines) < 2:
        logger.debug("interpreter %s failed: %s", path, done.stderr.strip()[-300:])
        return None
    real = lines[0] if os.path.isabs(lines[0]) else path
    return Interpreter(path=real, version=" ".join(lines[1:]).strip())


def find_interpreter(wanted: str | None, *, uv: str | None = None) -> Interpreter:
    """The interpreter a spec asks for: None (the worker's), a version ('3.11') or an absolute path.

    A version is looked up as ``python3.11`` on PATH, then (when ``uv`` is given) with
    ``uv python find``, never downloading one. Raises :class:`EnvBuildError` when none is found.
    """
    if wanted is None:
        return _must_run(base_interpreter(), "the worker's interpreter")
    if os.path.isabs(wanted):
        return _must_run(wanted, wanted)
    if _VERSION.match(wanted):
        return _find_version(wanted, uv)
    found = shutil.which(wanted, path=os.environ.get("PATH"))
    if found is None:
        raise EnvBuildError(f"python {wanted!r} is not on PATH", _PYTHON_HINT)
    return _must_run(found, wanted)


_PYTHON_HINT = (
    "install it on the worker, or give python as a version like '3.11' or an absolute path"
)


def _must_run(path: str, what: str) -> Interpreter:
    found = probe(path)
    if found is None:
        raise EnvBuildError(f"python {what} ({path}) does not run", _PYTHON_HINT)
    return found


def _find_version(version: str, uv: str | None) -> Interpreter:
    minor = ".".join(version.split(".")[:2])
    candidates = [shutil.which(f"python{minor}", path=os.environ.get("PATH"))]
    if uv is not None:
        candidates.append(_uv_find(uv, version))
    for candidate in candidates:
        found = probe(candidate) if candidate else None
        if found is not None and _matches(found.short_version, version):
            return found
    raise EnvBuildError(f"python {version} is not installed on this worker", _PYTHON_HINT)


def _matches(actual: str, wanted: str) -> bool:
    return actual == wanted or actual.startswith(wanted + ".")


def _uv_find(uv: str, version: str) -> str | None:
    argv = [uv, "python", "find", "--system", "--no-config", version]
    env = clean_env() | {"UV_PYTHON_DOWNLOADS": "never"}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd="/")
    except (OSError, subprocess.TimeoutExpired):
        return None
    path = done.stdout.strip()
    return path if done.returncode == 0 and os.path.isabs(path) else None
