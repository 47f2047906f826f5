"""The executor contract: prepare an environment for a spec, then say how to start a command in it."""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..envcache import EnvCache
from ..errors import EnvBuildError, StageTimeout
from ..spec import TaskSpec

logger = logging.getLogger(__name__)

#: where a run's log lines go while an environment is prepared
LogFn = Callable[[str], None]

_VERSION = re.compile(r"^\d+(\.\d+){0,2}$")


@dataclass
class ExecutorSettings:
    """What a worker tells its executors: where envs live, which installer, cache limits."""

    cache_root: Path  #: envs go under cache_root / <executor name>
    installer: str = "auto"  #: "auto" (uv when found, else pip), "uv" or "pip"
    max_envs: int = 20
    max_env_bytes: int | None = None
    failure_ttl: float = 600.0
    build_timeout: float | None = None  #: seconds; over it the build raises StageTimeout


@dataclass
class PreparedEnv:
    """An environment ready to run a spec's command."""

    python: str  #: absolute path of the interpreter the run uses
    env: dict[str, str] = field(default_factory=dict)  #: variables to set for the run
    path_prefix: list[str] = field(default_factory=list)  #: dirs to put first on PATH
    freeze: list[str] = field(default_factory=list)  #: "name==version" lines, sorted
    cache_key: str | None = None
    cache_hit: bool = False
    seconds: float = 0.0  #: time prepare() took
    installer: str = "none"  #: "uv", "pip" or "none"


class Executor(ABC):
    """Prepares the environment a run executes in (a venv, the worker's interpreter, a container)."""

    name: ClassVar[str]

    def __init__(self, settings: ExecutorSettings) -> None:
        self.settings = settings

    def unavailable_reason(self) -> str | None:
        """None when this executor can run here, else a sentence saying what is missing."""
        return None

    @abstractmethod
    def prepare(self, spec: TaskSpec, source_dir: Path, log: LogFn) -> PreparedEnv:
        """Build or reuse the environment for ``spec`` with its code checked out at ``source_dir``."""

    def command(self, prepared: PreparedEnv, argv: Sequence[str]) -> list[str]:
        """The full argv of a run: the prepared interpreter, then ``argv``."""
        return [prepared.python, *argv]

    def env_cache(self) -> EnvCache:
        """This executor's cache of built environments, under ``cache_root / name``."""
        s = self.settings
        return EnvCache(
            Path(s.cache_root) / self.name,
            max_entries=s.max_envs,
            max_bytes=s.max_env_bytes,
            failure_ttl=s.failure_ttl,
        )


# -- interpreters ---------------------------------------------------------------------------------
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
    return _probe(path, _clean_env_key())


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


# -- installer steps ------------------------------------------------------------------------------
#: installer output lines kept in the error message when a step fails
TAIL_LINES = 30


class Steps:
    """Runs the commands of one environment build: output to the run's log, one shared deadline.

    A step that exits non-zero raises :class:`EnvBuildError` with its last output lines; a build
    past ``timeout`` seconds has its step's process group killed and raises :class:`StageTimeout`.
    """

    def __init__(
        self, env: dict[str, str], log: LogFn, *, timeout: float | None, cwd: Path | None = None
    ) -> None:
        self.env, self.log, self.timeout, self.cwd = env, log, timeout, cwd
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def run(self, argv: list[str], what: str, hint: str, *, quiet: bool = False) -> list[str]:
        """Run one step; its output lines are logged (unless ``quiet``) and returned."""
        self.log(f"$ {shlex.join(argv)}")
        logger.info("env: %s", shlex.join(argv))
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        lines, expired = self._pump(proc, quiet)
        if expired.is_set():
            raise StageTimeout(
                f"env stage timed out after {self.timeout:g}s during {what}",
                "raise the build timeout, or pre-build the env on this worker",
            )
        if proc.returncode != 0:
            tail = "\n".join(collections.deque(lines, maxlen=TAIL_LINES))
            raise EnvBuildError(f"{what} failed (exit {proc.returncode}):\n{tail}", hint)
        return lines

    def _pump(self, proc: subprocess.Popen[str], quiet: bool) -> tuple[list[str], threading.Event]:
        expired = threading.Event()
        timer = self._watchdog(proc, expired)
        lines: list[str] = []
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                lines.append(raw.rstrip("\n"))
                if not quiet:
                    self.log(lines[-1])
            proc.wait()
        finally:
            if timer is not None:
                timer.cancel()
            if proc.poll() is None:
                kill_group(proc)
        return lines, expired

    def _watchdog(
        self, proc: subprocess.Popen[str], expired: threading.Event
    ) -> threading.Timer | None:
        if self.deadline is None:
            return None

        def fire() -> None:
            expired.set()
            kill_group(proc)

        timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), fire)
        timer.daemon = True
        timer.start()
        return timer


def kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill a process started in its own session and everything it started; gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# -- the environment given to installers ----------------------------------------------------------
_PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")
_PASS = frozenset(
    ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TEMP", "TMP")
    + ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "NETRC")
    + ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
    + _PROXIES
    + tuple(name.lower() for name in _PROXIES)
)
_PASS_PREFIXES = ("UV_", "PIP_")


def clean_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables an installer or probe may see: locale, paths, proxies, certificates, and the
    worker's own ``UV_*`` / ``PIP_*`` settings; never VIRTUAL_ENV, PYTHONPATH or PYTHONHOME."""
    source = os.environ if base is None else base
    return {k: v for k, v in source.items() if k in _PASS or k.startswith(_PASS_PREFIXES)}


def _clean_env_key() -> str:
    return os.environ.get("PATH", "")
