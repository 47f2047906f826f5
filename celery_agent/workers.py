"""The worker registry in Redis: heartbeats, current runs, hardware history, stopped and lost workers.

A worker's main process writes a heartbeat every ``heartbeat_interval`` seconds (see
:mod:`.worker`): the hash ``worker:{name}`` (TTL three intervals) holds who it is, its queues and
GPUs, the runs its pool is running and its latest machine snapshot; the capped stream
``worker:{name}:hw`` keeps a compact copy of each snapshot for plots. The runs a worker is running
are the set ``worker:{name}:runs``: the pipeline adds a run when it claims it and removes it when it
ends (pool children run the jobs, so the main process cannot know them by itself).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, NamedTuple

import redis

from .keys import Keys

logger = logging.getLogger(__name__)

ONLINE, STOPPED, LOST = "online", "stopped", "lost"
_JSON = ("queues", "gpus", "runs", "snapshot", "leases", "env_cache", "artifact_store")


class Seen(NamedTuple):
    """One worker as the sweep sees it (:meth:`WorkerRegistry.survey`)."""

    name: str
    alive: bool  #: its heartbeat is current
    gone: bool  #: already marked stopped or lost
    runs: list[str]  #: its current-run set
    holds: bool  #: it has a list of run messages it took (see :mod:`.reserved`)


class WorkerRegistry:
    """Heartbeat records, current-run sets and history streams of all workers."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.r: Any = client
        self.keys = keys

    # -- written by a worker --------------------------------------------------------------------
    def beat(self, name: str, record: dict[str, Any], ttl: float, history: int = 720) -> None:
        """Store ``record`` as the worker's heartbeat, and its snapshot in the history stream."""
        now = float(record.get("at") or time.time())
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(self.keys.worker(name), mapping=_encode(record))
        pipe.pexpire(self.keys.worker(name), int(ttl * 1000))
        pipe.zadd(self.keys.workers(), {name: now})
        pipe.hdel(self.keys.workers_gone(), name)
        if history > 0:
            entry = {"s": json.dumps(compact(record.get("snapshot") or {}))}
            pipe.xadd(self.keys.worker_history(name), entry, maxlen=history, approximate=True)
        pipe.execute()

    def stopped(self, name: str, hostname: str | None = None) -> None:
        """Record a clean shutdown: the heartbeat goes, the worker shows as stopped."""
        entry = {"state": STOPPED, "at": time.time(), "hostname": hostname}
        pipe = self.r.pipeline(transaction=False)
        pipe.delete(self.keys.worker(name))
        pipe.hset(self.keys.workers_gone(), name, json.dumps(entry))
        pipe.execute()

    def add_run(self, name: str, run_id: str, *, pipe: Any = None) -> None:
        """Note that the worker is running ``run_id`` (queued on ``pipe`` if given)."""
        (self.r if pipe is None else pipe).sadd(self.keys.worker_runs(name), run_id)

    def remove_run(self, name: str, run_id: str, *, pipe: Any = None) -> None:
        """Note that ``run_id`` no longer runs on the worker (queued on ``pipe`` if given)."""
        (self.r if pipe is None else pipe).srem(self.keys.worker_runs(name), run_id)

    # -- read by the CLI and the sweep ----------------------------------------------------------
    def names(self) -> list[str]:
        """Every worker seen (and not yet trimmed), most recently seen first."""
        return list(self.r.zrevrange(self.keys.workers(), 0, -1))

    def current_runs(self, name: str) -> list[str]:
        """The runs the worker is running now, sorted."""
        return sorted(self.r.smembers(self.keys.worker_runs(name)))

    def get(self, name: str) -> dict[str, Any] | None:
        """The worker's live heartbeat record, or None when it expired or the worker stopped."""
        raw = self.r.hgetall(self.keys.worker(name))
        return _decode(raw) if raw else None

    def overview(self) -> list[dict[str, Any]]:
        """One row per known worker: its record (or what is left of it) and its state."""
        names = self.names()
        if not names:
            return []
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.keys.worker(name))
        records = pipe.execute()
        gone = self.r.hgetall(self.keys.workers_gone())
        seen = dict(self.r.zrange(self.keys.workers(), 0, -1, withscores=True))
        return [
            self._row(n, raw, gone.get(n), seen.get(n))
            for n, raw in zip(names, records, strict=True)
        ]

    def _row(
        self, name: str, raw: dict[str, str], gone: str | None, seen: float | None
    ) -> dict[str, Any]:
        if raw:
            return _decode(raw) | {"name": name, "state": ONLINE, "last_seen": seen}
        info = json.loads(gone) if gone else {"state": LOST, "at": None}
        return {"name": name, "state": info["state"], "gone_at": info["at"], "last_seen": seen,
                "hostname": info.get("hostname")}  # fmt: skip

    def history(self, name: str, count: int = 120) -> list[dict[str, Any]]:
        """The worker's last ``count`` compact snapshots, oldest first."""
        entries = self.r.xrevrange(self.keys.worker_history(name), count=count)
        return [json.loads(data["s"]) for _, data in reversed(entries) if "s" in data]

    def survey(self, names: list[str]) -> list[Seen]:
        """What the sweep needs of each worker, in one round trip for the whole fleet."""
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.exists(self.keys.worker(name))
            pipe.hexists(self.keys.workers_gone(), name)
            pipe.smembers(self.keys.worker_runs(name))
            pipe.exists(self.keys.worker_reserved(name))
        got = pipe.execute()
        return [
            Seen(name, bool(got[i]), bool(got[i + 1]), sorted(got[i + 2]), bool(got[i + 3]))
            for name, i in zip(names, range(0, len(got), 4), strict=True)
        ]

    def is_alive(self, name: str) -> bool:
        """Whether the worker's heartbeat is still current."""
        return bool(self.r.exists(self.keys.worker(name)))

    def mark_lost(self, name: str) -> bool:
        """Mark a worker whose heartbeat expired as lost; False when it already was (or stopped)."""
        entry = json.dumps({"state": LOST, "at": time.time(), "hostname": None})
        return bool(self.r.hsetnx(self.keys.workers_gone(), name, entry))

    def trim(self, older_than: float) -> list[str]:
        """Forget workers not seen since ``older_than`` (epoch seconds); returns their names."""
        old = list(self.r.zrangebyscore(self.keys.workers(), "-inf", older_than))
        for name in old:
            pipe = self.r.pipeline(transaction=False)
            pipe.zrem(self.keys.workers(), name)
            pipe.hdel(self.keys.workers_gone(), name)
            pipe.delete(self.keys.worker_history(name), self.keys.worker_runs(name),
                        self.keys.worker_reserved(name))  # fmt: skip
            pipe.execute()
        return old


def compact(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The numbers a history plot needs from a snapshot: time, CPU %, memory %, load, per-GPU use."""
    host = snapshot.get("host") or {}
    return {
        "t": snapshot.get("at"),
        "cpu": host.get("cpu_percent"),
        "mem": host.get("memory_percent"),
        "load": (host.get("load") or [None])[0],
        "gpus": [
            {"uuid": g.get("uuid"), "util": g.get("util"), "mem": g.get("memory_used"),
             "mem_total": g.get("memory_total")}
            for g in snapshot.get("gpus") or []
        ],
    }  # fmt: skip


def _encode(record: dict[str, Any]) -> dict[str, str]:
    out = {}
    for name, value in record.items():
        out[name] = json.dumps(value) if name in _JSON else ("" if value is None else str(value))
    return out


def decode(raw: dict[str, str]) -> dict[str, Any]:
    """A heartbeat hash as stored, decoded (JSON fields parsed, numbers converted); raises
    ValueError when a field is malformed."""
    return _decode(raw)


def _decode(raw: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name in _JSON:
            out[name] = json.loads(value) if value else None
        elif name in ("at", "started_at", "interval"):
            out[name] = float(value) if value else None
        elif name in ("pid", "concurrency"):
            out[name] = int(value) if value else None
        else:
            out[name] = value
    return out
