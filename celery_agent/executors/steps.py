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

from ..errors import Cancelled, EnvBuildError, StageTimeout
from .indexes import mask_text

logger = logging.getLogger(__name__)

#: where a run's log lines go while an environment is prepared
LogFn = Callable[[str], None]


#: installer output lines kept in the error message when a step fails
TAIL_LINES = 30
#: seconds between two looks at the deadline and the stop check while a step runs
WATCH_EVERY = 0.1


class Steps:
    """Runs the commands of one environment build: output to the run's log, one shared deadline.

    A step that exits non-zero raises :class:`EnvBuildError` with its last output lines; a build
    past ``timeout`` seconds has its step's process group killed and raises :class:`StageTimeout`;
    when ``stop`` (asked every :data:`WATCH_EVERY` seconds) says so, likewise :class:`Cancelled`.
    """

    def __init__(self, env: dict[str, str], log: LogFn, *, timeout: float | None,
                 cwd: Path | None = None, stop: Callable[[], bool] | None = None) -> None:  # fmt: skip
        self.env, self.log, self.timeout, self.cwd, self.stop = env, log, timeout, cwd, stop
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
        lines, why = self._pump(proc, quiet)
        if why == "timeout":
            raise StageTimeout(
                f"env stage timed out after {self.timeout:g}s during {what}",
                "the limit is the spec's timeouts['env'] or timeout, else the worker's "
                "env_build_timeout setting; raise it, or pre-build the env on this worker",
            )
        if why == "stop":
            raise Cancelled(f"cancelled while preparing (during {what})")
        if proc.returncode != 0:
            tail = "\n".join(collections.deque(lines, maxlen=TAIL_LINES))
            raise EnvBuildError(f"{what} failed (exit {proc.returncode}):\n{tail}", hint)
        return lines

    def _pump(self, proc: subprocess.Popen[str], quiet: bool) -> tuple[list[str], str | None]:
        """The step's output lines, and why it was ended early ('timeout', 'stop' or None)."""
        done, why = threading.Event(), list[str]()
        watcher = self._watch(proc, done, why)
        lines: list[str] = []
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                lines.append(mask_text(raw.rstrip("\n")))
                if not quiet:
                    self.log(lines[-1])
            proc.wait()
        finally:
            done.set()
            if watcher is not None:
                watcher.join()
            if proc.poll() is None:
                kill_group(proc)
        return lines, (why[0] if why else None)

    def _watch(
        self, proc: subprocess.Popen[str], done: threading.Event, why: list[str]
    ) -> threading.Thread | None:
        """A thread that kills the step's group at the deadline or when ``stop`` says so."""
        if self.deadline is None and self.stop is None:
            return None

        def watch() -> None:
            while not done.wait(WATCH_EVERY):
                reason = self._ended()
                if reason is not None:
                    why.append(reason)
                    kill_group(proc)
                    return

        thread = threading.Thread(target=watch, name="env-step-watch", daemon=True)
        thread.start()
        return thread

    def _ended(self) -> str | None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "timeout"
        try:
            return "stop" if self.stop is not None and self.stop() else None
        except Exception as err:  # (Redis away: the deadline still holds)
            logger.warning("could not check whether the build should stop: %s", err)
            return None


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
