"""Reused checkouts: worktrees kept between runs of the same commit and diff while they stay pristine.

A fresh checkout costs ``git worktree add`` (and ``git apply``), and its removal ``git worktree
remove`` and ``prune``: four git processes and ~25-50 ms on a small repository, seconds on a large
one, for every run. Most runs on a worker check out a commit and diff an earlier run already had
(reruns, parameter sweeps, search trials), so :class:`TreePool` keeps the worktrees
:class:`~celery_agent.source.SourceCache` made in a folder next to the clone and lends one to the
next run of the same (commit, diff) - with no git process at all - when nothing in it changed.

"Nothing changed" is decided against a manifest written right after the checkout: for every file,
link and folder under the worktree (its ``.git`` file included), the inode, size, mode and, for
files and links, mtime and ctime in nanoseconds. A write, truncate, chmod, rename or replace
changes the ctime, which no program can set back; the worktree's HEAD must still name the commit.

A worktree is checked once per run, when it is lent - the one walk of its tree a run costs. What
the last run added is deleted then (``__pycache__`` folders of compiled files are kept: Python
checks them against their sources), and a changed or missing file retires the worktree on the
spot (it is removed as a fresh checkout's would be). Giving a worktree back only lets go of its
lock: a check there would walk the tree a second time, and could not replace the one at lease,
which alone also catches a process that wrote after its run ended. So what a run left stays on
disk until the worktree is next lent, or retired by the eviction below.

Each worktree has a lock file; a run holds its ``flock`` from lease to release, so one worktree
never serves two runs, and the lock of a run whose process died is free again. At most ``keep``
ready worktrees per repository are kept: making another retires the least recently used (one
given back unchecked counts as ready; it is checked when next lent, and never lent unchecked).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .filestamps import touch_now_and_then

logger = logging.getLogger(__name__)

__all__ = ["Lease", "TreePool", "diff_digest", "snapshot"]

_MANIFEST = ".json"
_LOCK = ".lock"
_PYC_DIR = "__pycache__"
_VERSION = 2

Entry = list[int]  #: [inode, size, mode, mtime_ns, ctime_ns] (times 0 for folders)


@functools.lru_cache(maxsize=8)  # (a diff is hashed once per process, not per run)
def diff_digest(diff: str) -> str:
    """A short name for a diff (empty for no diff), part of a reused worktree's key."""
    if not diff.strip():
        return "nodiff"
    return hashlib.sha256(diff.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def snapshot(root: Path) -> dict[str, Entry]:
    """Every file, link and folder under ``root`` (relative paths, ``/``-separated) with what a
    change would alter (the worktree's ``.git`` file, its link to the clone, included)."""
    entries: dict[str, Entry] = {}
    pending = [("", os.fspath(root))]  # (relative path, path) of each folder still to walk
    while pending:
        rel, folder = pending.pop()
        with os.scandir(folder) as it:
            for item in it:
                name = f"{rel}/{item.name}" if rel else item.name
                st = item.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    entries[name] = [st.st_ino, 0, st.st_mode, 0, 0]
                    pending.append((name, item.path))
                else:
                    entries[name] = [st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns,
                                     st.st_ctime_ns]  # fmt: skip
    return entries


@dataclass
class Lease:
    """A worktree lent to one run; its lock is held until :meth:`TreePool.release`."""

    path: Path
    commit: str
    digest: str
    fd: int
    reused: bool  #: True when the worktree served an earlier run


class TreePool:
    """The reusable worktrees of one clone, in ``folder`` (see the module's docstring)."""

    def __init__(self, folder: Path, keep: int) -> None:
        self.folder, self.keep = folder, keep

    # -- lending -------------------------------------------------------------------------------
    def lease(self, commit: str, digest: str, remove: Callable[[Path], None]) -> Lease | None:
        """A ready worktree of ``commit`` + diff ``digest`` no run holds, checked and cleaned of
        what the last run added, or None. One found changed is retired with ``remove`` at once."""
        if self.keep <= 0:
            return None
        for name in self._locks(_prefix(commit, digest)):
            lock = self.folder / name
            fd = _try_lock(lock)
            if fd is None:
                continue
            path = lock.with_suffix("")
            manifest = _read_manifest(path)
            if manifest is None or (manifest["commit"], manifest["digest"]) != (commit, digest):
                os.close(fd)  # another key's, or not ready: reserve() retires that, under
                continue  # the clone's lock, so never while it is being checked out
            if _pristine(path, manifest):
                touch_now_and_then(str(lock), create=False)  # least recently used first
                return Lease(path, commit, digest, fd, reused=True)
            logger.info("worktree %s changed since its checkout; retiring it", path.name)
            self._retire(path, fd, remove)
        return None

    def reserve(self, commit: str, digest: str, remove: Callable[[Path], None]) -> Lease:
        """A new worktree's place (locked, not yet checked out); call under the clone's lock.
        Retires unready and (beyond ``keep``) least recently used worktrees with ``remove``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._evict(remove)
        prefix = _prefix(commit, digest)
        for n in range(1, 10_000):
            lock = self.folder / f"{prefix}{n}{_LOCK}"
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)
            path = lock.with_suffix("")
            if path.exists():  # left by a crash before its lock file was removed
                shutil.rmtree(path, ignore_errors=True)
            return Lease(path, commit, digest, fd, reused=False)
        raise RuntimeError(f"no free worktree name in {self.folder}")  # 10,000 of one commit

    def seal(self, lease: Lease) -> None:
        """Record the fresh checkout's manifest: from now on the worktree can be lent again."""
        if self.keep <= 0:
            return
        admin = _admin_dir(lease.path)
        manifest = {"version": _VERSION, "commit": lease.commit, "digest": lease.digest,
                    "admin": str(admin), "head": _read(admin / "HEAD"),
                    "entries": snapshot(lease.path)}  # fmt: skip
        target = _manifest_path(lease.path)
        tmp = target + ".tmp"
        Path(tmp).write_text(json.dumps(manifest, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, target)

    def release(self, lease: Lease, remove: Callable[[Path], None]) -> None:
        """Give the worktree back after its run (once, however often this is called): only its
        lock is let go, unless it was never sealed (its diff failed, or the pool keeps none) and
        so can never be lent: that one is retired with ``remove``. The check of a sealed one -
        what the run added deleted, a change retiring it - waits for its next :meth:`lease`:
        one walk of the tree per run, and the only one that also catches late writers."""
        fd, lease.fd = lease.fd, -1
        if fd < 0:
            return  # given back already
        if os.path.exists(_manifest_path(lease.path)):
            os.close(fd)
        else:
            self._retire(lease.path, fd, remove)

    def drop(self, lease: Lease, remove: Callable[[Path], None]) -> None:
        """Retire a worktree that never became ready (its checkout or diff failed)."""
        self._retire(lease.path, lease.fd, remove)

    # -- retiring -------------------------------------------------------------------------------
    def _evict(self, remove: Callable[[Path], None]) -> None:
        ready: list[tuple[float, Path]] = []
        for name in self._locks(""):
            lock = self.folder / name
            if os.path.exists(_manifest_path(lock.with_suffix(""))):  # checked or not
                with contextlib.suppress(OSError):
                    ready.append((lock.stat().st_mtime, lock))
            else:
                self._retire_if_free(lock, remove)  # never became ready, or cut short retiring
        ready.sort()
        for _, lock in ready[: max(0, len(ready) - self.keep + 1)]:
            self._retire_if_free(lock, remove)

    def _retire_if_free(self, lock: Path, remove: Callable[[Path], None]) -> None:
        fd = _try_lock(lock)
        if fd is not None:  # else in use
            self._retire(lock.with_suffix(""), fd, remove)

    def _retire(self, path: Path, fd: int, remove: Callable[[Path], None]) -> None:
        """Remove a worktree whose lock ``fd`` holds: manifest, worktree, lock file; then close
        ``fd``."""
        try:
            Path(_manifest_path(path)).unlink(missing_ok=True)
            try:
                remove(path)
            except Exception as err:  # never let a cleanup failure hide a run's outcome
                logger.warning("could not remove worktree %s: %s", path, err)
            shutil.rmtree(path, ignore_errors=True)
            Path(str(path) + _LOCK).unlink(missing_ok=True)
        finally:
            os.close(fd)

    def _locks(self, prefix: str) -> list[str]:
        """The names of the lock files starting with ``prefix``, sorted; none without a folder.
        (A listing filtered by hand: a glob costs several times as much, on every lease.)"""
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.startswith(prefix) and n.endswith(_LOCK))


def _pristine(path: Path, manifest: dict[str, Any]) -> bool:
    """Whether the worktree still holds exactly its checkout; what was added is deleted."""
    head = _read(os.path.join(manifest["admin"], "HEAD"))
    if manifest["head"] is None or head != manifest["head"]:
        return False
    try:
        current = snapshot(path)
    except OSError:
        return False
    expected: dict[str, Entry] = manifest["entries"]
    if not expected.items() <= current.items():  # an entry changed or went missing
        return False
    added = [n for n in current.keys() - expected.keys() if not _compiled(n, current)]
    return _delete_added(path, added)


def _prefix(commit: str, digest: str) -> str:
    return f"{commit[:12]}-{digest[:8]}-"


def _manifest_path(path: Path) -> str:
    """Where the worktree's manifest is (a string: made on every lease and release, where a
    Path would cost more than the rest of the lookup)."""
    return f"{path}{_MANIFEST}"


_manifests: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}


def _read_manifest(path: Path) -> dict[str, Any] | None:
    """The worktree's manifest (parsed once per process while its file stays the same)."""
    target = _manifest_path(path)
    try:
        st = os.stat(target)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = _manifests.get(target)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        with open(target, "rb") as fh:
            manifest: dict[str, Any] = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    if manifest.get("version") != _VERSION:
        return None
    _manifests[target] = (stamp, manifest)
    return manifest


def _try_lock(lock: Path) -> int | None:
    """The lock file's descriptor, locked; None when another process holds it or it was removed
    (a lock file unlinked after this process opened it no longer names the worktree)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino != os.stat(lock).st_ino:
            raise OSError("lock file replaced")
    except OSError:
        os.close(fd)
        return None
    return fd


def _admin_dir(path: Path) -> Path:
    """Where git keeps the worktree's HEAD and index (named by its ``.git`` file)."""
    link = (path / ".git").read_text(encoding="utf-8").strip()
    return Path(link.removeprefix("gitdir:").strip())


def _read(path: str | Path) -> str | None:
    """A small file's text, stripped; None when it cannot be read. (Read as bytes: a text file
    object costs several times as much to open, and HEAD is read on every lease.)"""
    try:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8", "surrogateescape").strip()
    except OSError:
        return None


def _compiled(name: str, current: dict[str, Entry]) -> bool:
    """A ``__pycache__`` folder, or a compiled file in one (a plain file: a link could lead
    anywhere): kept between runs."""
    parts = name.split("/")
    if parts[-1] == _PYC_DIR:
        return stat.S_ISDIR(current[name][2])
    compiled = len(parts) > 1 and parts[-2] == _PYC_DIR and parts[-1].endswith(".pyc")
    return compiled and stat.S_ISREG(current[name][2])


def _delete_added(root: Path, added: list[str]) -> bool:
    """Delete what a run added (outermost first); False when something could not be deleted."""
    done: list[str] = []
    for name in sorted(added):
        if any(name.startswith(d + "/") for d in done):
            continue
        target = root / name
        try:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            logger.info("cannot delete %s from a used worktree: %s", target, err)
            return False
        done.append(name)
    return True
