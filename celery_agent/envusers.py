"""Who uses an environment cache entry: a lease per process and thread, so eviction passes it by.

A run takes a lease on its entry before it looks the entry up and gives it back when the run ends::

    root/.users/<key>/<pid>-<thread id>     holds the process's start time (pids are reused)

A lease whose process is gone counts for nothing (a crash leaves no entry pinned for ever). A
thread holds one lease at a time: its next one replaces it, so a run that ended without giving its
lease back (it failed before it started) holds nothing once its thread takes the next run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

#: the lease each (process, thread) holds now, by its file path
_HELD: dict[tuple[int, int], str] = {}


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


class Lease:
    """One process's use of one entry; :meth:`release` ends it (twice is fine)."""

    def __init__(self, key: str, path: str) -> None:
        self.key, self.path = key, path

    def release(self) -> None:
        """Give the lease back: the entry may be evicted again once no one else uses it."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        me = (os.getpid(), threading.get_native_id())
        if _HELD.get(me) == self.path:
            del _HELD[me]


class EnvUsers:
    """The leases on the entries of one cache root."""

    def __init__(self, root: Path) -> None:
        self.dir = os.path.join(root, ".users")

    def hold(self, key: str) -> Lease:
        """Lease ``key`` for this process and thread, giving back the thread's earlier lease."""
        me = (os.getpid(), threading.get_native_id())
        folder = os.path.join(self.dir, key)
        path = os.path.join(folder, f"{me[0]}-{me[1]}")
        try:
            _write(path, me[0])
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            _write(path, me[0])
        earlier = _HELD.get(me)
        if earlier is not None and earlier != path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(earlier)
        _HELD[me] = path
        return Lease(key, path)

    def holders(self, key: str) -> list[int]:
        """The pids of live processes holding a lease on ``key``; stale leases are removed."""
        folder = os.path.join(self.dir, key)
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        pids = []
        for name in names:
            pid = _live_holder(os.path.join(folder, name))
            if pid is not None:
                pids.append(pid)
        return pids

    def in_use(self, key: str) -> bool:
        """Whether a live process holds a lease on ``key``."""
        return bool(self.holders(key))


def _write(path: str, pid: int) -> None:
    with open(path, "w") as f:
        f.write(repr(_start_time(pid) or 0.0))


def _live_holder(path: str) -> int | None:
    """The pid of the lease at ``path`` when its process still runs; else the lease is removed."""
    try:
        pid = int(os.path.basename(path).split("-", 1)[0])
        with open(path) as f:
            started = float(f.read() or 0)
    except (OSError, ValueError):
        return None
    now = _start_time(pid)
    if now is not None and abs(now - started) < 1.0:
        return pid
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # its process is gone (or the pid was reused)
    logger.debug("removed the stale env lease %s", path)
    return None
