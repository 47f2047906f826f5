"""An env cache's listing, sizing and eviction: which entries are ready and how big, and removing
the least recently used ones no one uses until the cache's limits hold (see :mod:`.envcache` for
the layout of its folder)."""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import Timeout

from .entryfiles import mtime, read_json_or_empty, remove_tree, tree_sizes

if TYPE_CHECKING:
    from filelock import FileLock

    from .envusers import EnvUsers

logger = logging.getLogger(__name__)

#: keys name directories; no '.' so the lock, failure and trash siblings never look like entries
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,127}$")


class EnvEviction:
    """The listing, sizing and eviction half of :class:`.envcache.EnvCache`, which holds the
    folder, the limits, the entries' users and the per-key locks these use."""

    root: Path
    users: EnvUsers
    max_entries: int
    max_bytes: int | None

    if TYPE_CHECKING:

        def _dir(self, key: str) -> Path: ...

        def _lock(self, key: str, timeout: float) -> FileLock: ...

    def entries(self) -> list[dict[str, Any]]:
        """Ready entries, least recently used first: key, path, bytes (``shared_bytes`` of them in
        files linked elsewhere too, as uv links them from its cache), last_used, label."""
        rows = []
        for entry in self._ready_dirs():
            info = read_json_or_empty(entry / "entry.json")
            if info.get("bytes") is None:
                info |= dict(zip(("bytes", "shared_bytes"), tree_sizes(entry), strict=True))
            rows.append(
                {
                    "key": entry.name,
                    "path": entry / "env",
                    "bytes": int(info["bytes"]),
                    "shared_bytes": int(info.get("shared_bytes") or 0),
                    "last_used": mtime(entry / "last_used") or mtime(entry / "ready"),
                    "label": info.get("label", ""),
                }
            )
        return sorted(rows, key=lambda row: row["last_used"])

    def usage(self) -> dict[str, Any]:
        """How big the cache is: entries, bytes (``shared_bytes`` of them shared with the
        installer's cache), entries in use, and its limits."""
        rows = self.entries()
        return {
            "entries": len(rows),
            "bytes": sum(row["bytes"] for row in rows),
            "shared_bytes": sum(row["shared_bytes"] for row in rows),
            "in_use": sum(1 for row in rows if self.users.in_use(row["key"])),
            "max_entries": self.max_entries,
            "max_bytes": self.max_bytes,
        }

    def _ready_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir() if _KEY.match(p.name) and (p / "ready").exists()]

    def evict(self, keep: Collection[str] = ()) -> list[str]:
        """Remove least recently used entries until ``max_entries`` and ``max_bytes`` hold.

        Never removes an entry named in ``keep``, one whose lock a builder holds, or one a live
        process uses (holds a lease on): those are passed by for the next least recently used.
        Returns the evicted keys, oldest first.
        """
        self._sweep()
        rows = self.entries()
        count, total = len(rows), sum(row["bytes"] for row in rows)
        evicted: list[str] = []
        for row in rows:
            if not self._over_limits(count, total):
                break
            if row["key"] in keep or not self._evict_one(row["key"]):
                continue
            evicted.append(row["key"])
            count, total = count - 1, total - row["bytes"]
        if evicted:
            logger.info("evicted envs %s", ", ".join(evicted))
        if self._over_limits(count, total):
            logger.info("env cache over its limits (%d entries, %d bytes): the rest is in use",
                        count, total)  # fmt: skip
        return evicted

    def _evict_one(self, key: str) -> bool:
        """Remove an entry no one uses; False when it is in use or being built.

        Its ready marker is moved aside before the last look at its leases: a run that leased
        it after that look finds it not ready, and waits on the lock to build it again.
        """
        entry = self._dir(key)
        try:
            with self._lock(key, 0):
                if self.users.in_use(key):
                    return False
                aside = entry / "ready.evicting"
                os.replace(entry / "ready", aside)
                if self.users.in_use(key):  # leased in between: it stays
                    os.replace(aside, entry / "ready")
                    return False
                (self.root / f"{key}.failed").unlink(missing_ok=True)
                remove_tree(entry)
        except (Timeout, FileNotFoundError):
            return False
        return True

    def _sweep(self) -> None:
        """Remove what crashed processes left: half-removed trees and unlocked partial builds."""
        if not self.root.is_dir():
            return
        for path in self.root.iterdir():
            if ".trash-" in path.name:
                shutil.rmtree(path, ignore_errors=True)
            elif path.name.endswith(".alias"):
                target = read_json_or_empty(path).get("key")
                if not isinstance(target, str) or not (self.root / target).is_dir():
                    path.unlink(missing_ok=True)
            elif _KEY.match(path.name) and not (path / "ready").exists():
                self._remove_partial(path.name)

    def _remove_partial(self, key: str) -> None:
        try:
            with self._lock(key, 0):
                if not (self._dir(key) / "ready").exists():
                    remove_tree(self._dir(key))
        except Timeout:
            return  # a builder is at work on it

    def _over_limits(self, count: int, total: int) -> bool:
        return count > self.max_entries or (self.max_bytes is not None and total > self.max_bytes)
