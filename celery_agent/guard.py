"""A guard per worker process: the process groups of its runs die with it, however it dies.

A run's process is started in a session (and process group) of its own, so that it can be stopped
as a whole and a signal to the worker's group does not hit it; that also means nothing kills it
when the process that started it dies - ``kill -9`` of a pool process, of the whole worker, the
OOM killer - and a run nobody watches would go on beside the copy the sweep starts elsewhere.

Each process that starts runs keeps one guard: a small Python process (``python -I -S``, a few
MB, started once) in a session of its own, holding the read end of a pipe whose only write end
is this process's. The runner tells it each run's process group as the run starts (``+pgid``)
and ends (``-pgid``), one short write each. When this process dies, the kernel closes the write
end; the guard reads the end of the pipe and SIGKILLs every group it still holds, then exits.

This replaced ``setpriv --pdeathsig KILL`` in front of every run: an exec of its own per run
(~0.7 ms of CPU), and a death signal that reached the run's first process only, not its group.
A guard that is itself killed (it has its own session, so a signal to the worker's group misses
it) is started again at the next run, with the groups still running.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

logger = logging.getLogger(__name__)

__all__ = ["Guard", "guard"]

# The guard itself: standard library only, no site (it starts in ~10 ms and holds ~5 MB).
_SCRIPT = r"""
import os, signal
groups, buf = set(), b""
while True:
    try:
        data = os.read(0, 65536)
    except InterruptedError:
        continue
    except OSError:
        break
    if not data:
        break
    *lines, buf = (buf + data).split(b"\n")
    for line in lines:
        if line[:1] == b"+":
            groups.add(int(line[1:]))
        elif line[:1] == b"-":
            groups.discard(int(line[1:]))
for group in groups:
    try:
        os.killpg(group, signal.SIGKILL)
    except OSError:
        pass
"""


class Guard:
    """This process's guard (see the module docstring); started on first use, and again after
    a fork or when it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid = 0
        self._groups: set[int] = set()

    @property
    def pid(self) -> int | None:
        """The guard's process id while one runs for this process."""
        proc = self._proc
        return proc.pid if proc is not None and self._pid == os.getpid() else None

    def add(self, pgid: int) -> None:
        """Kill process group ``pgid`` should this process die before :meth:`remove`."""
        with self._lock:
            self._forget_if_forked()
            self._groups.add(pgid)
            self._send(f"+{pgid}\n")

    def remove(self, pgid: int) -> None:
        """The group ended (or this process stops it itself): no longer guarded."""
        with self._lock:
            self._forget_if_forked()
            if pgid in self._groups:
                self._groups.discard(pgid)
                self._send(f"-{pgid}\n")

    def _forget_if_forked(self) -> None:
        """A forked child starts with no guard: the guard and its groups are the parent's."""
        if self._pid != os.getpid():
            self._proc, self._pid, self._groups = None, os.getpid(), set()

    def _send(self, line: str) -> None:
        """Tell the guard ``line``; a guard started anew is told every group held instead."""
        for _ in range(2):
            if self._proc is None or self._proc.poll() is not None:
                self._proc = _start()
                line = "".join(f"+{group}\n" for group in self._groups)
            if self._proc is None or not line:
                return
            try:
                os.write(self._proc.stdin.fileno(), line.encode())  # type: ignore[union-attr]
                return
            except OSError as exc:  # it died since: the next turn starts another
                logger.warning("the run guard %d is gone (%s)", self._proc.pid, exc)
                self._proc.stdin.close()  # type: ignore[union-attr]
                self._proc.wait()
                self._proc = None


def _start() -> subprocess.Popen[bytes] | None:
    try:
        return subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _SCRIPT],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        logger.warning("cannot start the run guard (%s): runs will outlive a killed worker", exc)
        return None


_guard = Guard()


def guard() -> Guard:
    """The guard of this process."""
    return _guard
