"""Content-addressed cache of built environments (venvs now; conda prefixes and images later).

One entry per key, built once and reused in place::

    root/<key>/env/         the environment itself (its path never changes: venvs are not relocatable)
    root/<key>/meta.json    what the builder returned
    root/<key>/entry.json   label, size and build time, for listing and eviction
    root/<key>/ready        written last: an entry without it is a partial build
    root/<key>/last_used    touched on hits; its mtime orders eviction (least recently used first)
    root/<key>.lock         per-key lock held while building or removing
    root/<key>.failed       a cached build failure, re-raised until it is older than the failure ttl
    root/<alias>.alias      another key for an entry (its frozen set): holds the entry's key
    root/.users/<key>/      leases of the processes using the entry (see :mod:`.envusers`)

Entries a live process holds a lease on are never evicted: eviction passes them by and takes the
next least recently used one.

A hit is the common case and stays cheap: one stat of ``ready`` (meta.json is parsed again only
when that stamp changed, see :class:`~.filestamps.FileMemo`) and a touch of ``last_used`` at
most once per :data:`~.filestamps.TOUCH_INTERVAL` seconds per entry and process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .entryfiles import read_json, read_json_or_empty, remove_tree, tree_sizes, write_json
from .enveviction import _KEY, EnvEviction
from .envusers import EnvUsers, Lease
from .errors import Cancelled, EnvBuildError, StateError
from .filestamps import FileMemo, Stamp, touch, touch_now_and_then

logger = logging.getLogger(__name__)

#: a builder: gets the final env path (to create), returns metadata stored as meta.json
Builder = Callable[[Path], dict[str, Any]]
#: told each outcome of :meth:`EnvCache.get_or_build` with its seconds: "hit" (a ready entry,
#: found at once or built meanwhile by another process), "built" (a miss this call built) or
#: "failed" (a miss whose build raised); not told of a cached failure re-raised (nothing ran)
Observer = Callable[[str, float], None]


@dataclass(frozen=True)
class CachedEnv:
    """A ready cache entry.

    ``seconds`` is the time spent in :meth:`EnvCache.get_or_build`: validating a hit, or building.
    """

    key: str
    path: Path
    hit: bool
    seconds: float
    meta: dict[str, Any]
    lease: Lease | None = None  #: held while a run uses the entry; give it back when it ends


@dataclass(frozen=True)
class _Ready:
    """What a ready entry's marker vouches for: its env path and its parsed meta.json."""

    env: Path
    meta: dict[str, Any]


def _read_ready(ready: str, _stamp: Stamp) -> _Ready:
    entry = Path(ready).parent
    return _Ready(entry / "env", read_json(entry / "meta.json"))


#: ready markers by path; the marker is written last and replaced by any rebuild, so its stamp
#: vouches for meta.json (a removed entry has no marker: the stat fails and the hit is a miss)
_READY: FileMemo[_Ready] = FileMemo(_read_ready)


def _ready(entry: str) -> _Ready | None:
    """The entry if its ready marker is there; meta.json is parsed only when the marker changed."""
    return _READY.get(os.path.join(entry, "ready"))


class EnvCache(EnvEviction):
    """Environments keyed by content, built once under a per-key lock and evicted least recently used."""

    def __init__(
        self,
        root: Path,
        *,
        max_entries: int = 20,
        max_bytes: int | None = None,
        failure_ttl: float = 600.0,
        lock_timeout: float = 3600.0,
        stop: Callable[[], bool] | None = None,
        observe: Observer | None = None,
    ) -> None:
        self.root = Path(root)
        self.stop = stop  #: asked while another build of the same entry is waited for
        self.observe = observe  #: told every hit, build and failed build (metrics)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.failure_ttl = failure_ttl
        self.lock_timeout = lock_timeout
        self.users = EnvUsers(self.root)

    # -- keys and paths ---------------------------------------------------------------------------
    @staticmethod
    def key(parts: Mapping[str, Any]) -> str:
        """The key of an environment: sha256 of its parts as canonical JSON, first 24 hex digits."""
        text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def _dir(self, key: str) -> Path:
        return self.root / self._checked(key)

    def _entry(self, key: str) -> str:
        """The entry's directory as a string: the hit path avoids building Path objects."""
        return os.path.join(self.root, self._checked(key))

    @staticmethod
    def _checked(key: str) -> str:
        if not _KEY.match(key):
            raise ValueError(
                f"env cache key {key!r} is not valid: use letters, digits, '_', '-', '.'"
            )
        return key

    def _lock(self, key: str, timeout: float) -> FileLock:
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(self.root / f"{key}.lock", timeout=timeout)

    @contextmanager
    def _build_lock(self, key: str) -> Iterator[None]:
        """Hold ``key``'s build lock, waited for in tenths of a second so that ``stop`` (a cancel)
        ends the wait; Timeout after ``lock_timeout``."""
        lock, deadline = self._lock(key, self.lock_timeout), time.monotonic() + self.lock_timeout
        while True:
            try:
                lock.acquire(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
                break
            except Timeout:
                if time.monotonic() >= deadline:
                    raise
                if self.stop is not None and self.stop():
                    raise Cancelled(
                        "cancelled while another build of its environment ran"
                    ) from None
        try:
            yield
        finally:
            lock.release()

    # -- reading ----------------------------------------------------------------------------------
    def lookup(self, key: str) -> CachedEnv | None:
        """The ready entry for ``key``, or None; takes no lock and does not count as a use."""
        start = time.perf_counter()
        ready = _ready(self._entry(key))
        if ready is None:
            return None
        return CachedEnv(key, ready.env, True, time.perf_counter() - start, dict(ready.meta))

    def _hit(self, key: str, start: float) -> CachedEnv | None:
        entry = self._entry(key)
        ready = _ready(entry)
        if ready is None:
            return None
        touch_now_and_then(os.path.join(entry, "last_used"))  # (a build's touch: not counted)
        seconds = time.perf_counter() - start
        logger.debug("env cache hit %s in %.2f ms", key, seconds * 1000)
        return CachedEnv(key, ready.env, True, seconds, dict(ready.meta))

    # -- building ---------------------------------------------------------------------------------
    def get_or_build(
        self, key: str, build: Builder, *, label: str = "", hold: bool = False
    ) -> CachedEnv:
        """The entry for ``key``: reused in place when ready, else built once by ``build(env_path)``.

        Concurrent callers (threads or processes) wait on a per-key lock, and all but the first
        find the entry ready. A build that raises :class:`EnvBuildError` is remembered for
        ``failure_ttl`` seconds: calls in that window re-raise it without building again. With
        ``hold`` the entry comes with a lease (taken before it is looked up, so eviction cannot
        take it away in between) that keeps it from eviction until released. A key made an alias
        of another entry (:meth:`alias`) gets that entry.
        """
        start = time.perf_counter()
        lease = self.users.hold(key) if hold else None
        try:
            found = self._hit(key, start) or self._aliased(key, start, hold)
            if found is None:
                found = self._build(key, build, label, start)
            self._tell("hit" if found.hit else "built", found.seconds)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        if hold and found.lease is None:
            found = dataclasses.replace(found, lease=lease)
        return found

    def _build(self, key: str, build: Builder, label: str, start: float) -> CachedEnv:
        self._raise_cached_failure(key)
        try:
            with self._build_lock(key):
                result = self._build_locked(key, build, label, start)
        except Timeout:
            raise StateError(
                f"env cache entry {key} stayed locked for {self.lock_timeout:.0f}s",
                "another worker may be stuck building it; remove the lock file "
                f"{self.root / (key + '.lock')} if no build is running",
            ) from None
        if not result.hit:
            self._evict_after_build(key)
        return result

    # -- aliases ----------------------------------------------------------------------------------
    def alias(self, alias: str, key: str) -> None:
        """Make ``alias`` name the entry of ``key`` (e.g. the key its frozen set would have)."""
        if alias != key:
            self.root.mkdir(parents=True, exist_ok=True)
            write_json(self.root / f"{self._checked(alias)}.alias", {"key": self._checked(key)})

    def _aliased(self, alias: str, start: float, hold: bool) -> CachedEnv | None:
        """The ready entry ``alias`` names, leased first when ``hold``; None when there is none."""
        target = read_json_or_empty(self.root / f"{alias}.alias").get("key")
        if not isinstance(target, str) or not _KEY.match(target):
            return None
        lease = self.users.hold(target) if hold else None
        found = self._hit(target, start)
        if found is None:
            if lease is not None:
                lease.release()
            return None
        logger.debug("env cache %s is an alias of %s", alias, target)
        return dataclasses.replace(found, lease=lease)

    def _build_locked(self, key: str, build: Builder, label: str, start: float) -> CachedEnv:
        found = self._hit(key, start)
        if found is not None:
            return found
        self._raise_cached_failure(key)
        entry = self._dir(key)
        remove_tree(entry)  # a partial build left by a crash
        entry.mkdir(parents=True)
        logger.info("building env %s %s", key, label)
        meta = self._run_builder(key, build, entry)
        self._finish(entry, meta, label, time.perf_counter() - start)
        seconds = time.perf_counter() - start
        logger.info("built env %s in %.1fs", key, seconds)
        return CachedEnv(key, entry / "env", False, seconds, meta)

    def _run_builder(self, key: str, build: Builder, entry: Path) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            meta = build(entry / "env")
        except EnvBuildError as exc:
            remove_tree(entry)
            self._record_failure(key, exc)
            self._tell("failed", time.perf_counter() - started)
            raise
        except BaseException:
            remove_tree(entry)
            raise
        return dict(meta or {})

    def _finish(self, entry: Path, meta: dict[str, Any], label: str, seconds: float) -> None:
        write_json(entry / "meta.json", meta)
        nbytes, shared = tree_sizes(entry)
        info = {"label": label, "bytes": nbytes, "shared_bytes": shared, "built_at": time.time()}
        write_json(entry / "entry.json", info | {"build_seconds": round(seconds, 3)})
        touch(entry / "last_used")
        write_json(entry / "ready", {"at": time.time()})

    def _evict_after_build(self, key: str) -> None:
        try:
            self.evict(keep={key})
        except OSError as exc:
            logger.warning("env cache eviction failed: %s", exc)

    def _tell(self, outcome: str, seconds: float) -> None:
        if self.observe is not None:
            try:
                self.observe(outcome, seconds)
            except Exception as exc:  # counting must never fail a run
                logger.warning("env cache: could not count a %s: %s", outcome, exc)

    # -- failures ---------------------------------------------------------------------------------
    def _record_failure(self, key: str, exc: EnvBuildError) -> None:
        if self.failure_ttl <= 0:
            return
        record = {"message": exc.message, "hint": exc.hint, "time": time.time()}
        write_json(self.root / f"{key}.failed", record)

    def _raise_cached_failure(self, key: str) -> None:
        path = self.root / f"{key}.failed"
        try:
            record = read_json(path)
        except (OSError, ValueError):
            return
        age = time.time() - float(record.get("time", 0))
        if age >= self.failure_ttl:
            path.unlink(missing_ok=True)
            return
        raise EnvBuildError(
            f"cached failure from {age:.0f}s ago: {record.get('message', '')}",
            f"{record['hint'] + '; then ' if record.get('hint') else ''}change the requirements or "
            f"clear the cache entry {key} (it is retried after {self.failure_ttl:.0f}s)",
        )

    def remove(self, key: str, *, wait: bool = True) -> bool:
        """Remove the entry and any cached failure for ``key``; False when a builder holds it.

        With ``wait`` the call waits for a running build (up to the lock timeout) first.
        """
        entry = self._dir(key)
        try:
            with self._lock(key, self.lock_timeout if wait else 0):
                (self.root / f"{key}.failed").unlink(missing_ok=True)
                remove_tree(entry)
        except Timeout:
            return False
        return True


def usage_under(root: Path, **limits: Any) -> dict[str, Any]:
    """:meth:`EnvCache.usage` summed over the executors' caches under ``root`` (venv, conda)."""
    total: dict[str, Any] = {"entries": 0, "bytes": 0, "shared_bytes": 0, "in_use": 0}
    folders = sorted(p for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
    for folder in folders:
        one = EnvCache(folder, **limits).usage()
        for name in ("entries", "bytes", "shared_bytes", "in_use"):
            total[name] += one[name]
        total |= {"max_entries": one["max_entries"], "max_bytes": one["max_bytes"]}
    return total
