"""The input cache: each input a run names, downloaded once per machine, kept by its content.

An input's files live in ``{root}/{key}/{name}`` (:class:`~.inputs.Source` gives the key, which
changes with the content). One process downloads a given key at a time, under an exclusive lock
on ``{root}/{key}.lock``; it writes into a private ``.part-`` folder and renames it into place,
so no reader ever sees a half-written input, and a download cut short (a cancel, a killed worker)
leaves nothing behind that looks complete. A second run wanting the same key waits for the lock
and finds the folder there: no second download.

A run holds a shared lock on each of its inputs' keys until it ends; :meth:`InputCache.evict`
(the ``input_cache_max_gb`` bound) removes the least recently used inputs, never one a run holds.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .errors import AgentError, Cancelled, SpecError, StageTimeout
from .inputs import Entry, Source
from .inputs import field as input_field
from .transfer import Mismatch, copy_checked

logger = logging.getLogger(__name__)

POLL = 0.1  #: seconds between tries of a lock another run holds
THREADS = 8  #: files of a folder input copied at once

#: told how many bytes arrived (for progress), after each chunk
Progress = Callable[[int], None]


@dataclass
class Fetched:
    """An input on this machine: its local path, whether it was there already, and the shared
    lock that keeps it there (no eviction) until :meth:`release`."""

    name: str
    path: Path
    hit: bool
    bytes: int
    seconds: float
    lock: BinaryIO | None = field(default=None, repr=False, compare=False)

    def release(self) -> None:
        """Let the input go: the cache may evict it once no run holds it."""
        if self.lock is not None:
            self.lock.close()  # (closing the file drops its flock)
            self.lock = None


class InputCache:
    """The inputs kept on this machine, under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, source: Source) -> Path:
        """Where ``source`` is (or will be) on this machine."""
        return self.root / source.key / source.local_name

    def fetch(
        self,
        source: Source,
        stop: Callable[[], bool] = lambda: False,
        timeout: float | None = None,
        progress: Progress = lambda _: None,
    ) -> Fetched:
        """``source`` on this machine, downloaded unless it is already here, held with a shared
        lock until the result is released. Raises Cancelled when ``stop()`` turns true,
        StageTimeout after ``timeout`` seconds, a SpecError naming ``inputs.NAME`` when a file
        cannot be read or does not match its manifest."""
        t0 = time.monotonic()
        check = _checker(source, stop, None if timeout is None else t0 + timeout)
        target = self.path(source)
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / f"{source.key}.lock", "a+b")  # noqa: SIM115 (held by Fetched)
        try:
            size = None
            while not target.exists():  # (complete: only a whole download is renamed into place)
                if _lock(handle, fcntl.LOCK_EX, check, until=target.exists):
                    size = self._download_held(source, target, check, progress)
            _lock(handle, fcntl.LOCK_SH, check)  # (an eviction holds it exclusively)
            if not target.exists():  # evicted between the download and the shared lock
                handle.close()
                return self.fetch(source, stop, timeout, progress)
        except BaseException:
            handle.close()
            raise
        os.utime(target.parent)  # (when it was last used: what eviction looks at)
        seconds = round(time.monotonic() - t0, 3)
        return Fetched(source.name, target, size is None, size or 0, seconds, handle)

    def _download_held(
        self, source: Source, target: Path, check: Callable[[], None], progress: Progress
    ) -> int | None:
        """Download ``source`` while holding its key's exclusive lock (None: already there)."""
        if target.exists():
            return None
        self._clear_parts(source.key)
        part = self.root / f".part-{source.key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            size = self._download(source, part / source.local_name, check, progress)
            part.rename(self.root / source.key)
        finally:
            shutil.rmtree(part, ignore_errors=True)
        return size

    def evict(self, max_bytes: int) -> list[str]:
        """Remove the least recently used inputs no run holds until the cache takes at most
        ``max_bytes``; returns the keys removed."""
        entries = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        sizes = {p: _tree_size(p) for p in entries}
        total, removed = sum(sizes.values()), []
        for entry in sorted(entries, key=lambda p: p.stat().st_mtime):
            if total <= max_bytes:
                break
            with open(self.root / f"{entry.name}.lock", "a+b") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a run holds it
                trash = self.root / f".evicted-{entry.name}-{uuid.uuid4().hex[:8]}"
                entry.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            total -= sizes[entry]
            removed.append(entry.name)
        return removed

    def _clear_parts(self, key: str) -> None:
        """Remove what a download of ``key`` cut short left (only the lock holder writes them)."""
        for old in self.root.glob(f".part-{key}-*"):
            shutil.rmtree(old, ignore_errors=True)

    def _download(
        self, source: Source, dest: Path, check: Callable[[], None], progress: Progress
    ) -> int:
        """Copy the input's files into ``dest``, several at a time; returns the bytes copied."""
        if source.folder:
            dest.mkdir(parents=True)
        targets = [_target(source, dest, entry) for entry in source.entries]
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)

        def one(pair: tuple[Entry, Path]) -> int:
            return copy_file(source, pair[0], pair[1], check, progress)

        pairs = list(zip(source.entries, targets, strict=True))
        with ThreadPoolExecutor(max(1, min(THREADS, len(pairs)))) as pool:
            return sum(pool.map(one, pairs))


def _target(source: Source, dest: Path, entry: Entry) -> Path:
    """Where ``entry`` goes under ``dest``; a SpecError for a path that would leave it."""
    target = dest / entry.rel if entry.rel else dest
    if ".." in Path(entry.rel).parts or dest not in (target, *target.parents):
        raise SpecError(
            f"{input_field(source.name)}: file {entry.rel!r} would leave its folder",
            "check the manifest",
            input_field(source.name),
        )
    return target


def copy_file(
    source: Source, entry: Entry, target: Path, check: Callable[[], None], progress: Progress
) -> int:
    """Copy one file of ``source`` to ``target`` (:func:`.transfer.copy_checked`); a SpecError
    naming ``inputs.NAME`` when it cannot be read or is not what its manifest says."""
    what = entry.rel or "it"
    try:
        return copy_checked(source.fs, entry.remote, target, sha256=entry.sha256,
                            size=entry.size, check=check, progress=progress)  # fmt: skip
    except AgentError:  # (a cancel, the stage's deadline)
        raise
    except Mismatch as err:
        raise SpecError(
            f"{input_field(source.name)} {source.url!r}: {what} changed in its store ({err})",
            "rerun the run that made it, or submit again if the file was being rewritten",
            input_field(source.name),
        ) from None
    except Exception as err:
        raise SpecError(
            f"{input_field(source.name)} {source.url!r}: reading {what} failed: "
            f"{type(err).__name__}: {err}",
            "check that it still exists and that the worker can reach the store",
            input_field(source.name),
        ) from None


def _lock(
    handle: BinaryIO,
    mode: int,
    check: Callable[[], None],
    until: Callable[[], bool] = lambda: False,
) -> bool:
    """Take ``mode`` (LOCK_EX or LOCK_SH) on ``handle``, polling so that ``check`` can end the
    wait; False, without the lock, as soon as ``until()`` is true."""
    while True:
        try:
            fcntl.flock(handle, mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if until():
                return False
            check()
            time.sleep(POLL)


def _checker(
    source: Source, stop: Callable[[], bool], deadline: float | None
) -> Callable[[], None]:
    """Raises Cancelled once ``stop()`` is true, StageTimeout once ``deadline`` passed."""

    def check() -> None:
        if stop():
            raise Cancelled(f"cancelled while fetching input {source.name}")
        if deadline is not None and time.monotonic() >= deadline:
            err = StageTimeout(f"inputs stage timed out fetching {input_field(source.name)}")
            err.stage = "inputs"
            raise err

    return check


def _tree_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
