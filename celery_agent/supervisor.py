"""One process that keeps a machine's Celery workers running: `celery-agent workers`.

It starts each worker of the plan (see :mod:`.layout`) and stays in front of them, so a Procfile,
a systemd unit or a terminal has one process to start and to stop:

- **a worker that dies is started again**, after 1 s, then 2, 4, ... up to 60 s while it keeps
  dying young (a worker that ran 60 s before it died starts over at 1 s); each exit is logged
  with its code and how long the worker ran, under the worker's own output saying why;
- **stop signals are passed on, once**: SIGTERM, SIGINT and SIGQUIT go to every worker's main
  process, which then drains as a worker signalled directly would (the first SIGTERM lets runs
  finish for ``drain_grace``, a second stops them and puts them back on their queues). The
  workers run in sessions of their own, so a signal to this process's group (honcho, a terminal's
  Ctrl+C) reaches them only through here, never twice;
- **a worker never outlives it**: on Linux each worker gets SIGTERM when this process dies, however
  it dies; when that follows a stop already passed on (honcho kills its processes 5 s after its
  SIGTERM) it is the second SIGTERM, so runs go back to their queues instead of being lost.

It exits 0 once every worker has stopped after a stop signal.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
FIRST_DELAY, MAX_DELAY = 1.0, 60.0  #: seconds before a restart: doubling from FIRST up to MAX
STEADY = 60.0  #: a worker that ran this long before it died starts its backoff over
POLL = 0.5  #: seconds between looks at the workers when no signal arrives
_PR_SET_PDEATHSIG = 1


def backoff(failures: int) -> float:
    """Seconds to wait before starting a worker again after ``failures`` early deaths in a row."""
    return float(min(MAX_DELAY, FIRST_DELAY * 2 ** max(failures - 1, 0)))


@dataclass
class Child:
    """One supervised worker: its name, command line and the process running it now."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0  #: early deaths in a row
    restart_at: float | None = None
    done: bool = False  #: stopped for good (after a stop signal)

    @property
    def label(self) -> str:
        """The name as Celery spells it out (``gpu0@%h`` -> ``gpu0@myhost``)."""
        return self.name.replace("%h", socket.gethostname())


@dataclass
class Supervisor:
    """Runs ``children`` until a stop signal and every child has stopped (see the module doc)."""

    children: list[Child]
    env: dict[str, str] | None = None
    clock: Callable[[], float] = time.monotonic
    signals: list[int] = field(default_factory=list)
    stopping: bool = False

    def run(self) -> int:
        """Start every child, keep them running, pass stop signals on; returns the exit code.
        (Call it from the main thread: signal handlers live there.)"""
        wake_r, wake_w = os.pipe()  # a signal writes a byte here: the loop wakes at once
        os.set_blocking(wake_w, False)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        old_fd = signal.set_wakeup_fd(wake_w)
        try:
            for child in self.children:
                self.start(child)
            while not (self.stopping and all(c.done for c in self.children)):
                if select.select([wake_r], [], [], POLL)[0]:
                    os.read(wake_r, 512)
                self.step()
        finally:
            signal.set_wakeup_fd(old_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(wake_r)
            os.close(wake_w)
        logger.info("every worker has stopped")
        return 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals.append(signum)  # (only a flag: the loop does the work)

    def step(self) -> None:
        """Pass on the signals received since the last step, then look after each child."""
        while self.signals:
            self.forward(self.signals.pop(0))
        for child in self.children:
            self.tend(child)

    def forward(self, signum: int) -> None:
        """Send ``signum`` to every running worker; from now on nothing is restarted."""
        self.stopping = True
        name = signal.Signals(signum).name
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                logger.info("passing %s on to %s (pid %d)", name, child.label, child.proc.pid)
                _signal(child.proc.pid, signum)

    def tend(self, child: Child) -> None:
        """Notice a child's exit and schedule or perform its restart (none while stopping)."""
        if child.done:
            return
        if child.proc is not None and child.proc.poll() is not None:
            self._exited(child, child.proc.returncode)
        if child.proc is None and self.stopping:
            child.done = True
        elif child.proc is None and self.clock() >= (child.restart_at or float("inf")):
            self.start(child)

    def _exited(self, child: Child, code: int) -> None:
        ran = self.clock() - child.started
        child.proc = None
        if self.stopping:
            logger.info("%s stopped: %s", child.label, _ended(code))
            return
        child.failures = 1 if ran >= STEADY else child.failures + 1
        delay = backoff(child.failures)
        child.restart_at = self.clock() + delay
        why = "" if ran >= STEADY else " (its output above says why)"
        logger.warning("%s %s after %.1fs%s; starting it again in %.0fs",
                       child.label, _ended(code), ran, why, delay)  # fmt: skip

    def start(self, child: Child) -> None:
        """Start (or start again) one child, in a session of its own, dying with this process."""
        logger.info("starting %s: %s", child.label, shlex.join(child.argv))
        child.proc = subprocess.Popen(
            child.argv, env=self.env, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=die_with(os.getpid()),
        )  # fmt: skip
        child.started, child.restart_at = self.clock(), None


def supervise(workers: Sequence[tuple[str, list[str]]]) -> int:
    """Run the given ``(name, argv)`` workers under a :class:`Supervisor`; returns its exit code."""
    return Supervisor([Child(name, argv) for name, argv in workers]).run()


def _ended(code: int) -> str:
    """'exited with code 1' or 'was killed by SIGKILL'."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited just now; the next step notices
        os.kill(pid, signum)


def die_with(parent: int) -> Callable[[], None] | None:
    """A pre-exec hook that has the kernel SIGTERM the child when ``parent`` dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None

    def hook() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the hook ran
            os.kill(os.getpid(), signal.SIGTERM)

    return hook
