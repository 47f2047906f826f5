"""The input cache: each input a run names, downloaded once per machine, kept by its content.

An input's files live in ``{root}/{key}/{name}`` (:class:`~.inputs.Source` gives the key, which
changes with the content). One process downloads a given key at a time, under an exclusive lock
on ``{root}/{key}.lock``; it writes into a private ``.part-`` folder and renames it into place,
so no reader ever sees a half-written input, and a download cut short (a cancel, a killed worker)
leaves nothing behind that looks complete. A second run wanting the same key waits for the lock
and finds the folder there: no second download.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import AgentError, Cancelled, SpecError, StageTimeout
from .inputs import Entry, Source, field
from .transfer import Mismatch, copy_checked

logger = logging.getLogger(__name__)

POLL = 0.1  #: seconds between tries of a lock another run holds
THREADS = 8  #: files of a folder input copied at once

#: told how many bytes arrived (for progress), after each chunk
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Fetched:
    """An input on this machine: its local path, and whether it was there already."""

    name: str
    path: Path
    hit: bool
    bytes: int
    seconds: float


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
        """``source`` on this machine, downloaded unless it is already here. Raises Cancelled when
        ``stop()`` turns true, StageTimeout after ``timeout`` seconds, a SpecError naming
        ``inputs.NAME`` when a file cannot be read or does not match its manifest."""
        t0 = time.monotonic()
        deadline = None if timeout is None else t0 + timeout
        target = self.path(source)
        if target.exists():  # (complete: only a finished download is renamed into place)
            return self._hit(source, target, t0)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked(source, stop, deadline):
            if target.exists():  # another run downloaded it while this one waited
                return self._hit(source, target, t0)
            self._clear_parts(source.key)
            part = self.root / f".part-{source.key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                size = self._download(source, part / source.local_name, stop, deadline, progress)
                part.rename(self.root / source.key)
            finally:
                shutil.rmtree(part, ignore_errors=True)
        return Fetched(source.name, target, False, size, round(time.monotonic() - t0, 3))

    def _hit(self, source: Source, target: Path, t0: float) -> Fetched:
        os.utime(target.parent)  # (when it was last used: what an eviction would look at)
        return Fetched(source.name, target, True, 0, round(time.monotonic() - t0, 3))

    @contextmanager
    def _locked(
        self, source: Source, stop: Callable[[], bool], deadline: float | None
    ) -> Iterator[None]:
        """Hold the key's lock; poll it so a cancel or the deadline ends the wait."""
        with open(self.root / f"{source.key}.lock", "a+b") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    _check(source, stop, deadline, "waiting for another run's download of it")
                    time.sleep(POLL)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _clear_parts(self, key: str) -> None:
        """Remove what a download of ``key`` cut short left (only the lock holder writes them)."""
        for old in self.root.glob(f".part-{key}-*"):
            shutil.rmtree(old, ignore_errors=True)

    def _download(
        self,
        source: Source,
        dest: Path,
        stop: Callable[[], bool],
        deadline: float | None,
        progress: Progress,
    ) -> int:
        """Copy the input's files into ``dest``, several at a time; returns the bytes copied."""
        if source.folder:
            dest.mkdir(parents=True)
        targets = [_target(source, dest, entry) for entry in source.entries]
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)

        def one(pair: tuple[Entry, Path]) -> int:
            check = lambda: _check(source, stop, deadline)  # noqa: E731
            return copy_file(source, pair[0], pair[1], check, progress)

        pairs = list(zip(source.entries, targets, strict=True))
        with ThreadPoolExecutor(max(1, min(THREADS, len(pairs)))) as pool:
            return sum(pool.map(one, pairs))


def _target(source: Source, dest: Path, entry: Entry) -> Path:
    """Where ``entry`` goes under ``dest``; a SpecError for a path that would leave it."""
    target = dest / entry.rel if entry.rel else dest
    if ".." in Path(entry.rel).parts or dest not in (target, *target.parents):
        raise SpecError(
            f"{field(source.name)}: file {entry.rel!r} would leave its folder",
            "check the manifest",
            field(source.name),
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
            f"{field(source.name)} {source.url!r}: {what} changed in its store ({err})",
            "rerun the run that made it, or submit again if the file was being rewritten",
            field(source.name),
        ) from None
    except Exception as err:
        raise SpecError(
            f"{field(source.name)} {source.url!r}: reading {what} failed: "
            f"{type(err).__name__}: {err}",
            "check that it still exists and that the worker can reach the store",
            field(source.name),
        ) from None


def _check(
    source: Source, stop: Callable[[], bool], deadline: float | None, doing: str = ""
) -> None:
    if stop():
        raise Cancelled(f"cancelled while fetching input {source.name}")
    if deadline is not None and time.monotonic() >= deadline:
        err = StageTimeout(
            f"inputs stage timed out fetching {field(source.name)}"
            + (f" ({doing})" if doing else "")
        )
        err.stage = "inputs"
        raise err
