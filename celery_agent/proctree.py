"""Process trees: find a process's descendants and group members, sample their usage, kill them.

A run's processes are its child, everything in the child's process group, and every descendant of
those, including ones that left the group (``setsid``) but were seen earlier. Stopping them is TERM
to the group and to each known process outside it, a grace period, then KILL, with psutil as the
backstop. A process that is already gone is never an error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import psutil

logger = logging.getLogger(__name__)

__all__ = [
    "TreeSampler",
    "alive",
    "collect",
    "kill_tree",
    "proc_group_empty",
    "terminate",
    "tree",
]

_KILL_WAIT = 2.0  # how long to wait for KILLed processes to disappear


def kill_tree(pid: int, *, grace: float, pgid: int | None = None) -> None:
    """Stop process ``pid``, its process group ``pgid`` (default: ``pid``, the group it leads) and
    every descendant: TERM, up to ``grace`` seconds to exit, then KILL. Descendants are collected
    before any signal, so one that left the group (``setsid``) is still KILLed. A process that is
    already gone is not an error."""
    group = pid if pgid is None else pgid
    terminate(collect(pid, group, {}), group, grace)


# -- discovery ----------------------------------------------------------------------------------
def tree(pid: int) -> list[psutil.Process]:
    """Process ``pid`` and all its descendants; empty when ``pid`` is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def collect(pid: int, pgid: int, extra: Mapping[int, psutil.Process]) -> list[psutil.Process]:
    """The process, its group's members, their descendants, and those of ``extra`` still alive."""
    found: dict[int, psutil.Process] = {}
    own = pgid == os.getpgrp()
    for root in [pid] if own else [pid, *_group_pids(pgid)]:
        for proc in tree(root):
            found.setdefault(proc.pid, proc)
    for proc in extra.values():
        if proc.pid not in found and alive(proc):
            found[proc.pid] = proc
    found.pop(os.getpid(), None)
    return list(found.values())


def alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (a zombie has exited; only its parent's reap is missing)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def proc_group_empty(pgid: int) -> bool:
    """Whether process group ``pgid`` has no member left (call after its leader was reaped: a
    group id is not given to a new process while the group has members)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid:
                pids.append(pid)
        except OSError:
            continue
    return pids


def _pgid(proc: psutil.Process) -> int | None:
    try:
        return os.getpgid(proc.pid)
    except OSError:
        return None


# -- usage --------------------------------------------------------------------------------------
@dataclass
class TreeSampler:
    """Sums CPU time and RSS over the tree under ``pid``, at most once per ``interval`` seconds
    through :meth:`maybe_sample`; keeps the highest totals and remembers every process it saw."""

    pid: int
    interval: float
    cpu_seconds: float | None = None
    max_rss_bytes: int | None = None
    samples: int = 0
    seen: dict[int, psutil.Process] = field(default_factory=dict)
    next_at: float = 0.0

    def maybe_sample(self, now: float) -> None:
        """Sample when ``interval`` seconds (monotonic ``now``) have passed since the last one."""
        if now >= self.next_at:
            self.next_at = now + self.interval
            self.sample()

    def add_rusage(self, cpu_seconds: float, max_rss_bytes: int) -> None:
        """Take in the exited child's resource use as its parent got it with its exit status."""
        self.cpu_seconds = max(cpu_seconds, self.cpu_seconds or 0.0)
        self.max_rss_bytes = max(max_rss_bytes, self.max_rss_bytes or 0)

    def sample(self) -> None:
        """Sample now; nothing is recorded once ``pid`` is gone."""
        procs = tree(self.pid)
        if not procs:
            return
        cpu, rss = 0.0, 0
        for proc in procs:
            self.seen.setdefault(proc.pid, proc)
            cpu_p, rss_p = _proc_usage(proc)
            cpu, rss = cpu + cpu_p, rss + rss_p
        self.cpu_seconds = max(cpu, self.cpu_seconds or 0.0)
        self.max_rss_bytes = max(rss, self.max_rss_bytes or 0)
        self.samples += 1


def _proc_usage(proc: psutil.Process) -> tuple[float, int]:
    try:
        with proc.oneshot():
            t = proc.cpu_times()
            rss = proc.memory_info().rss
        return t.user + t.system + t.children_user + t.children_system, rss
    except psutil.Error:
        return 0.0, 0


# -- killing ------------------------------------------------------------------------------------
def terminate(procs: list[psutil.Process], pgid: int, grace: float) -> None:
    """TERM the group (and known processes outside it), wait ``grace``, KILL, wait for the end."""
    own = pgid == os.getpgrp()
    outside = procs if own else [p for p in procs if _pgid(p) != pgid]
    if not own:
        _signal_group(pgid, signal.SIGTERM)
    _signal_each(outside, signal.SIGTERM)
    if grace > 0 and not _wait_gone(procs, grace):
        logger.info("processes still running %.1fs after TERM; sending KILL", grace)
    if not own:
        _signal_group(pgid, signal.SIGKILL)
    _signal_each([p for p in procs if alive(p)], signal.SIGKILL)
    if not _wait_gone(procs, _KILL_WAIT):
        logger.warning("processes %s survived KILL", [p.pid for p in procs if alive(p)])


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the group is gone
    except PermissionError:
        logger.warning("not allowed to signal process group %d", pgid)


def _signal_each(procs: list[psutil.Process], sig: signal.Signals) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):  # gone, or not ours to signal
            proc.send_signal(sig)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.002
    while any(alive(p) for p in procs):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True
