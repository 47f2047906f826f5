"""Python interpreters on this machine: the worker's own, one by version, one by path.

Every venv prepare asks :func:`find_interpreter`, so its answer is memoized per process and
checked with a stat or two per call (see there); probing an interpreter runs it, so probes are
cached by the file's stamp.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import EnvBuildError
from ..filestamps import Stamp, file_stamp, is_settled
from .steps import clean_env, clean_env_key

logger = logging.getLogger(__name__)

_VERSION = re.compile(r"^\d+(\.\d+){0,2}$")

#: a memoized interpreter is looked up again after this many seconds, for what no stamp shows
#: (a python installed into a folder earlier on PATH, a version manager's shim retargeted)
REDISCOVER_S = 60.0


@dataclass(frozen=True)
class Interpreter:
    """A Python interpreter found on this machine."""

    path: str  #: absolute path to invoke it by
    version: str  #: its full sys.version

    @property
    def short_version(self) -> str:
        """'3.11.7' from the full version text."""
        return self.version.split()[0]


@dataclass(frozen=True)
class _Found:
    """A memoized lookup: the interpreter, the stamps of the files it came from, and when."""

    interpreter: Interpreter
    stamps: tuple[tuple[str, Stamp], ...]  #: (path, stamp): the file looked up, the one that ran
    at: float  #: time.monotonic() of the lookup

    def current(self) -> bool:
        """True while no file changed and the lookup is younger than :data:`REDISCOVER_S`."""
        if time.monotonic() - self.at >= REDISCOVER_S:
            return False
        return all(file_stamp(path) == stamp for path, stamp in self.stamps)


#: (wanted, uv, PATH) -> the last lookup
_FOUND: dict[tuple[str | None, str | None, str], _Found] = {}


def _base_executable() -> str:
    return getattr(sys, "_base_executable", None) or sys.executable


def base_interpreter() -> str:
    """The worker's base interpreter by real path (not the python of the venv the worker runs in)."""
    return str(Path(_base_executable()).resolve())


def probe(path: str) -> Interpreter | None:
    """Ask the interpreter at ``path`` for its real executable and version; None if it cannot run.

    Cached by the file's stamp as well as its path, so an interpreter replaced in place (an
    upgrade) is asked again.
    """
    return _probe(path, clean_env_key(), file_stamp(path))


@functools.lru_cache(maxsize=64)
def _probe(path: str, _env_key: str, _stamp: Stamp | None) -> Interpreter | None:
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

    The answer is memoized per process by (wanted, uv, PATH). That is safe because it depends only
    on those and on two files: the one looked up (symlinks followed, so a retargeted link counts)
    and the executable the probe reported. Each call stats both and looks up again when either
    stamp changed; stamps are kept only once settled (see :class:`~celery_agent.filestamps.FileMemo`),
    so a replacement within a clock tick cannot hide. What no stamp shows, such as a new python in
    an earlier PATH folder, is picked up within :data:`REDISCOVER_S` seconds. Failures are not
    memoized.
    """
    memo_key = (wanted, uv, os.environ.get("PATH", ""))
    held = _FOUND.get(memo_key)
    if held is not None and held.current():
        return held.interpreter
    since = time.time_ns()
    located, found = _discover(wanted, uv)
    _remember(memo_key, found, (located, found.path), since)
    return found


def _remember(
    memo_key: tuple[str | None, str | None, str],
    found: Interpreter,
    paths: tuple[str, str],
    since: int,
) -> None:
    """Keep ``found`` if the files it came from had settled before the lookup began (``since``).

    A file reached by both paths (a symlink and its target) is checked once, by the first path.
    """
    _FOUND.pop(memo_key, None)
    stamps: dict[Stamp, str] = {}
    for path in paths:
        stamp = file_stamp(path)
        if stamp is None or not is_settled(stamp, since):
            return
        stamps.setdefault(stamp, path)
    checks = tuple((path, stamp) for stamp, path in stamps.items())
    _FOUND[memo_key] = _Found(found, checks, time.monotonic())


def _discover(wanted: str | None, uv: str | None) -> tuple[str, Interpreter]:
    """The file looked up for ``wanted`` and the interpreter it runs (see find_interpreter)."""
    if wanted is None:
        return _base_executable(), _must_run(base_interpreter(), "the worker's interpreter")
    if os.path.isabs(wanted):
        return wanted, _must_run(wanted, wanted)
    if _VERSION.match(wanted):
        return _find_version(wanted, uv)
    found = shutil.which(wanted, path=os.environ.get("PATH"))
    if found is None:
        raise EnvBuildError(f"python {wanted!r} is not on PATH", _PYTHON_HINT)
    return found, _must_run(found, wanted)


_PYTHON_HINT = (
    "install it on the worker, or give python as a version like '3.11' or an absolute path"
)


def _must_run(path: str, what: str) -> Interpreter:
    found = probe(path)
    if found is None:
        raise EnvBuildError(f"python {what} ({path}) does not run", _PYTHON_HINT)
    return found


def _find_version(version: str, uv: str | None) -> tuple[str, Interpreter]:
    for candidate in filter(None, _version_candidates(version, uv)):
        found = probe(candidate)
        if found is not None and _matches(found.short_version, version):
            return candidate, found
    raise EnvBuildError(f"python {version} is not installed on this worker", _PYTHON_HINT)


def _version_candidates(version: str, uv: str | None) -> Iterator[str | None]:
    """``python3.11`` on PATH, then uv's find (run only when the first does not match)."""
    minor = ".".join(version.split(".")[:2])
    yield shutil.which(f"python{minor}", path=os.environ.get("PATH"))
    if uv is not None:
        yield _uv_find(uv, version)


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
