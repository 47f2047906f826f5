"""Installer steps: run a command with its output streamed to the run's log, bounded in time."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ..errors import EnvBuildError, StageTimeout
from .indexes import mask_text

logger = logging.getLogger(__name__)

#: where a run's log lines go while an environment is prepared
LogFn = Callable[[str], None]


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
        shown = mask_text(shlex.join(argv))  # (an index URL may carry a password)
        self.log(f"$ {shown}")
        logger.info("env: %s", shown)
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
                "the limit is the spec's timeouts['env'] or timeout, else the worker's "
                "env_build_timeout setting; raise it, or pre-build the env on this worker",
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
                lines.append(mask_text(raw.rstrip("\n")))
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


def clean_env_key() -> str:
    return os.environ.get("PATH", "")
