"""Reused checkouts: worktrees kept between runs of the same commit and diff while they stay pristine.

A fresh checkout costs ``git worktree add`` (and ``git apply``), and its removal ``git worktree
remove`` and ``prune``: four git processes and ~25-50 ms on a small repository, seconds on a large
one, for every run. Most runs on a worker check out a commit and diff an earlier run already had
(reruns, parameter sweeps, search trials), so :class:`TreePool` keeps the worktrees
:class:`~celery_agent.source.SourceCache` made in a folder next to the clone and lends one to the
next run of the same (commit, diff) - with no git process at all - when nothing in it changed.

"Nothing changed" is decided against a manifest written right after the checkout: for every file,
link and folder under the worktree (its ``.git`` file aside), the inode, size, mode and, for
files and links, mtime and ctime in nanoseconds. A write, truncate, chmod, rename or replace
changes the ctime, which no program can set back; the worktree's HEAD must still name the commit.
After a run, what it added is deleted (``__pycache__`` folders of compiled files are kept: Python
checks them against their sources); a changed or missing file retires the worktree (it is removed
as a fresh checkout's would be). The same check runs again before a worktree is lent, so a process
that wrote late cannot leak into the next run.

Each worktree has a lock file; a run holds its ``flock`` from lease to release, so one worktree
never serves two runs, and the lock of a run whose process died is free again. At most ``keep``
ready worktrees per repository are kept: making another retires the least recently used.
"""

from __future__ import annotations

import contextlib
import fcntl
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

logger = logging.getLogger(__name__)

__all__ = ["Lease", "TreePool", "diff_digest", "snapshot"]

_MANIFEST = ".json"
_LOCK = ".lock"
_PYC_DIR = "__pycache__"
_VERSION = 2

Entry = list[int]  #: [inode, size, mode, mtime_ns, ctime_ns] (times 0 for folders)


def diff_digest(diff: str) -> str:
    """A short name for a diff (empty for no diff), part of a reused worktree's key."""
    if not diff.strip():
        return "nodiff"
    return hashlib.sha256(diff.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def snapshot(root: Path) -> dict[str, Entry]:
    """Every file, link and folder under ``root`` (relative paths, ``/``-separated) with what a
    change would alter (the worktree's ``.git`` file, its link to the clone, included)."""
    entries: dict[str, Entry] = {}
    pending = [""]
    while pending:
        rel = pending.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            for item in it:
                name = f"{rel}/{item.name}" if rel else item.name
                st = item.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    entries[name] = [st.st_ino, 0, st.st_mode, 0, 0]
                    pending.append(name)
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
    def lease(self, commit: str, digest: str) -> Lease | None:
        """A ready, pristine worktree of ``commit`` + diff ``digest`` no run holds, or None."""
        if self.keep <= 0 or not self.folder.is_dir():
            return None
        prefix = _prefix(commit, digest)
        for lock in sorted(self.folder.glob(prefix + "*" + _LOCK)):
            fd = _try_lock(lock)
            if fd is None:
                continue
            path = lock.with_suffix("")
            manifest = _read_manifest(path)
            if manifest is None or (manifest["commit"], manifest["digest"]) != (commit, digest):
                os.close(fd)
                continue
            if self._pristine(path, manifest):
                os.utime(lock)  # least recently used goes first
                return Lease(path, commit, digest, fd, reused=True)
            logger.info("worktree %s changed since its checkout; not reusing it", path.name)
            _manifest_path(path).unlink(missing_ok=True)  # retired at the next reserve()
            os.close(fd)
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
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(manifest, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, target)

    def release(self, lease: Lease, remove: Callable[[Path], None]) -> bool:
        """Give the worktree back after its run: cleaned and kept when only new files appeared,
        else retired with ``remove``. True when it was kept."""
        try:
            manifest = _read_manifest(lease.path)
            kept = manifest is not None and self._pristine(lease.path, manifest)
            if not kept:
                self._retire(lease.path, remove)
            return kept
        finally:
            os.close(lease.fd)

    def drop(self, lease: Lease, remove: Callable[[Path], None]) -> None:
        """Retire a worktree that never became ready (its checkout or diff failed)."""
        try:
            self._retire(lease.path, remove)
        finally:
            os.close(lease.fd)

    # -- checks ---------------------------------------------------------------------------------
    def _pristine(self, path: Path, manifest: dict[str, Any]) -> bool:
        """Whether the worktree still holds exactly its checkout; what was added is deleted."""
        if manifest["head"] is None or _read(Path(manifest["admin"], "HEAD")) != manifest["head"]:
            return False
        try:
            current = snapshot(path)
        except OSError:
            return False
        expected: dict[str, Entry] = manifest["entries"]
        for name, entry in expected.items():
            now = current.get(name)
            if now is None or (now != entry if entry[3] or now[3] else now[:3] != entry[:3]):
                return False
        added = [n for n in current if n not in expected and not _compiled(n, current)]
        return _delete_added(path, added)

    # -- retiring -------------------------------------------------------------------------------
    def _evict(self, remove: Callable[[Path], None]) -> None:
        ready: list[tuple[float, Path]] = []
        for lock in self.folder.glob("*" + _LOCK):
            path = lock.with_suffix("")
            if _manifest_path(path).exists():
                with contextlib.suppress(OSError):
                    ready.append((lock.stat().st_mtime, lock))
            else:
                self._retire_if_free(lock, remove)  # never became ready, or changed
        ready.sort()
        for _, lock in ready[: max(0, len(ready) - self.keep + 1)]:
            self._retire_if_free(lock, remove)

    def _retire_if_free(self, lock: Path, remove: Callable[[Path], None]) -> None:
        fd = _try_lock(lock)
        if fd is None:
            return  # in use
        try:
            self._retire(lock.with_suffix(""), remove)
        finally:
            os.close(fd)

    def _retire(self, path: Path, remove: Callable[[Path], None]) -> None:
        """Remove a worktree whose lock this process holds: manifest, worktree, then lock file."""
        _manifest_path(path).unlink(missing_ok=True)
        try:
            remove(path)
        except Exception as err:  # never let a cleanup failure hide a run's outcome
            logger.warning("could not remove worktree %s: %s", path, err)
        shutil.rmtree(path, ignore_errors=True)
        Path(str(path) + _LOCK).unlink(missing_ok=True)


def _prefix(commit: str, digest: str) -> str:
    return f"{commit[:12]}-{digest[:8]}-"


def _manifest_path(path: Path) -> Path:
    return Path(str(path) + _MANIFEST)


_manifests: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}


def _read_manifest(path: Path) -> dict[str, Any] | None:
    """The worktree's manifest (parsed once per process while its file stays the same)."""
    target = _manifest_path(path)
    try:
        st = os.stat(target)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = _manifests.get(str(target))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        manifest: dict[str, Any] = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("version") != _VERSION:
        return None
    _manifests[str(target)] = (stamp, manifest)
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


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return None


def _compiled(name: str, current: dict[str, Entry]) -> bool:
    """A ``__pycache__`` folder, or a compiled file in one: kept between runs."""
    parts = name.split("/")
    if parts[-1] == _PYC_DIR:
        return stat.S_ISDIR(current[name][2])
    return len(parts) > 1 and parts[-2] == _PYC_DIR and parts[-1].endswith(".pyc")


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
