"""File stamps: values memoized while a file stays the same, and touches made now and then.

Used on every run's hot path - the env cache's ``ready`` and requirement files, interpreter
probes, reused worktrees' locks - where a read, a parse or a write per run would add up.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

#: touch_now_and_then touches a path at most this often per process, so eviction may rank two
#: entries used within this many seconds of each other either way (the cost of a write per use)
TOUCH_INTERVAL = 10.0

#: a file's identity and change times: (mode, device, inode, size, mtime ns, ctime ns)
Stamp = tuple[int, int, int, int, int, int]

#: a stamp is trusted for memoizing once the file's ctime lies this far before the stat (see FileMemo)
SETTLE_NS = 3_000_000_000

#: memo tables are emptied when they reach this size (checkouts and envs come and go)
_MEMO_ENTRIES = 1024

T = TypeVar("T")


def file_stamp(path: str) -> Stamp | None:
    """The stat stamp of ``path`` (symlinks followed), or None when nothing is there."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def is_settled(stamp: Stamp, since_ns: int) -> bool:
    """Whether the file had stopped changing :data:`SETTLE_NS` before ``since_ns`` (wall clock ns,
    read before the stat that made ``stamp``), so that any later change gets a different ctime."""
    return since_ns - stamp[5] >= SETTLE_NS


class FileMemo(Generic[T]):
    """Values computed from files, reused while a file's :func:`file_stamp` is unchanged.

    File times are coarse (a clock tick, whole seconds on some file systems): a file rewritten in
    the tick it was stamped, with the same size, keeps its stamp. So a stamp is kept only once the
    file has settled (:func:`is_settled`); until then the value is computed on every call. The
    stat comes before the read, so a change racing the read leaves a stamp that no longer matches.
    """

    def __init__(self, compute: Callable[[str, Stamp], T]) -> None:
        self.compute = compute
        self._held: dict[str, tuple[Stamp, T]] = {}

    def get(self, path: str) -> T | None:
        """``compute(path, stamp)``, or the value kept for this stamp; None when there is no file."""
        since = time.time_ns()
        stamp = file_stamp(path)
        held = self._held.get(path)
        if held is not None and held[0] == stamp:
            return held[1]
        self._held.pop(path, None)
        if stamp is None:
            return None
        value = self.compute(path, stamp)
        if is_settled(stamp, since):
            if len(self._held) >= _MEMO_ENTRIES:
                self._held.clear()
            self._held[path] = (stamp, value)
        return value


#: path -> time.monotonic() of this process's last touch of it (see :func:`touch_now_and_then`)
_TOUCHED: dict[str, float] = {}


def touch_now_and_then(path: str, *, create: bool = True) -> None:
    """Touch ``path`` (its mtime orders eviction) unless this process did in the last
    :data:`TOUCH_INTERVAL` s: eviction needs only the order of uses minutes apart, and a touch is
    a file system write. A missing file is made when ``create``, else left missing."""
    now = time.monotonic()
    last = _TOUCHED.get(path)
    if last is not None and now - last < TOUCH_INTERVAL:
        return
    if create:
        touch(Path(path))
    else:
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
    if len(_TOUCHED) >= _MEMO_ENTRIES:
        _TOUCHED.clear()
    _TOUCHED[path] = now


def touch(path: Path) -> None:
    """Set ``path``'s mtime to now, making the file when it is missing."""
    try:
        os.utime(path)
    except FileNotFoundError:
        path.touch()
