"""A pool process whose worker died: stop its runs and exit, so the sweep can re-queue them.

Heartbeats come from the worker's main process. When that process is killed (``kill -9``, the OOM
killer), billiard's pool processes live on: a run keeps going unsupervised, its claim is still
renewed (so it is never re-queued) and nobody can cancel it through the worker. So each pool process
runs a :class:`Watchdog`: a daemon thread that notices its parent is gone (``os.getppid()``
changed, looked at every :data:`POLL` seconds) and then kills the process groups of what it runs (its child processes, and every process
of their runs found by ``CELERY_AGENT_RUN_ID``) and exits at once with ``os._exit``. It releases
nothing: the run's claim simply stops being renewed, expires after ``claim_ttl``, and beat's sweep
puts the run back on its queue with the same run id (see :mod:`.sweep`, :mod:`.requeue`).

From the first kill to the exit the watchdog keeps the GIL (a long switch interval, and only calls
that never release it), so the run's own thread cannot get as far as noticing its process died and
recording an outcome: the run stays active, its claim expires, and the sweep re-queues it.

Celery asks the kernel to SIGKILL a pool process the moment its parent dies (``PR_SET_PDEATHSIG``).
That kills the pool process and, through the runner's own death signal, the run's first process,
but not the rest of the run's process group, which would live on with nobody to stop it. A pool
process with a watchdog clears that death signal, so it outlives its parent just long enough to
kill all of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psutil

from .attempts import RUN_ID_ENV

logger = logging.getLogger(__name__)

POLL = 1.0  #: seconds between looks at the parent process
EXIT_CODE = 70  #: exit status of a pool process that outlived its worker
_FREEZE = 1.0  #: GIL switch interval (seconds) while killing: other threads wait meanwhile

_worker_pid: int | None = None


def remember_worker() -> None:
    """Note this process as the worker's main process (call there, before the pool forks)."""
    global _worker_pid
    _worker_pid = os.getpid()


def watch(interval: float = POLL) -> Watchdog | None:
    """Start a watchdog in a pool process of the worker noted by :func:`remember_worker`; None in
    any other process (a solo pool runs in the main process: its parent is a shell)."""
    parent = os.getppid()
    if _worker_pid is None or parent != _worker_pid:
        return None
    dog = Watchdog(parent, interval).start()
    _outlive_parent()
    return dog


def _outlive_parent() -> None:
    """Clear this process's parent-death signal (Celery sets SIGKILL): the watchdog acts instead."""
    try:
        from billiard.util import set_pdeathsig

        set_pdeathsig(0)
    except (ImportError, OSError) as err:  # not Linux: there was no death signal either
        logger.debug("parent-death signal left as it is: %s", err)


@dataclass
class Targets:
    """What an orphaned pool process must kill: process groups, processes and their runs."""

    groups: set[int] = field(default_factory=set)
    pids: set[int] = field(default_factory=set)
    runs: set[str] = field(default_factory=set)

    @classmethod
    def find(cls, root: int | None = None) -> Targets:
        """The descendants of ``root`` (this process by default) and every other process on the
        machine that belongs to one of their runs (a grandchild that left its parent)."""
        found = cls()
        try:
            kids = psutil.Process(root).children(recursive=True)
        except psutil.Error:
            kids = []
        for proc in kids:
            found._add(proc)
        if found.runs:
            for proc in psutil.process_iter():
                if _run_id(proc) in found.runs:
                    found._add(proc)
        found.pids.discard(os.getpid())
        found.groups.discard(os.getpgrp())
        return found

    def _add(self, proc: psutil.Process) -> None:
        with contextlib.suppress(psutil.Error, OSError):
            self.pids.add(proc.pid)
            self.groups.add(os.getpgid(proc.pid))
        run_id = _run_id(proc)
        if run_id:
            self.runs.add(run_id)

    def kill(self) -> None:
        """SIGKILL every group and process (one that is already gone is fine). No call here
        releases the GIL, so under :func:`frozen` nothing else in this process runs meanwhile."""
        for pgid in self.groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _run_id(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get(RUN_ID_ENV) or None
    except (psutil.Error, OSError):
        return None


@contextlib.contextmanager
def frozen() -> Iterator[None]:
    """Keep the GIL in this thread until it blocks: other threads of the process get no time slice
    meanwhile (one already waiting may run until its next blocking call)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(_FREEZE)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


class Watchdog:
    """Polls the parent pid; when the parent is gone, kills what this process runs and exits."""

    def __init__(
        self, parent: int, interval: float = POLL, exit: Callable[[int], object] = os._exit
    ) -> None:
        self.parent, self.interval, self.exit = parent, interval, exit
        self.fired = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ca-orphan-watch", daemon=True)

    def start(self) -> Watchdog:
        """Start watching."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (tests; a pool process just exits)."""
        self._stop.set()
        self._thread.join(self.interval + 1)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if os.getppid() != self.parent:
                self.orphaned()
                return

    def orphaned(self) -> None:
        """Kill what this process runs, then exit with :data:`EXIT_CODE`."""
        targets = Targets.find()
        logger.error(
            "worker process %d is gone: killing %d process(es) of run(s) %s and exiting",
            self.parent,
            len(targets.pids),
            ", ".join(sorted(targets.runs)) or "-",
        )
        with frozen():
            targets.kill()
            self.exit(EXIT_CODE)
        self.fired.set()  # reached only when ``exit`` returns (tests)
