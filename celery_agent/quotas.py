"""Quotas: how many runs and GPUs a user or a project may hold at once, overall or on one queue.

A quota's scope is ``user:NAME`` or ``project:NAME``, on one queue ``user:NAME@QUEUE``; its limits
are ``runs`` and ``gpus`` (either may be left out). They come from the settings (``quotas``, items
``user:alice:runs=8``, ``project:vision@gpu0:gpus=4``) and from Redis (``celery-agent quota set``),
where the fleet sees a change at once; a scope set in Redis wins over the same scope in the
settings. The gate in :mod:`.fairorder` enforces them when a run is admitted on a worker.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from .errors import ConfigError
from .state import RunStore

KINDS = ("user", "project")
LIMITS = ("runs", "gpus")
_ITEM = re.compile(
    r"^(?P<kind>user|project):(?P<name>[A-Za-z0-9_][A-Za-z0-9_.@\-]*?)(@(?P<queue>[A-Za-z0-9_.:\-]+))?"
    r":(?P<limit>runs|gpus)=(?P<value>\d+)$"
)
_WEIGHT = re.compile(r"^(?P<name>[A-Za-z0-9_][A-Za-z0-9_.@\-]*)=(?P<value>\d+(\.\d+)?)$")


def scope(kind: str, name: str, queue: str | None = None) -> str:
    """``user:alice`` or ``user:alice@gpu0``."""
    if kind not in KINDS:
        raise ConfigError(
            f"a quota is for a user or a project, not {kind!r}", "use user or project"
        )
    return f"{kind}:{name}" + (f"@{queue}" if queue else "")


def parse_settings(items: Iterable[str]) -> dict[str, dict[str, int]]:
    """The ``quotas`` setting's items as scope -> limits."""
    out: dict[str, dict[str, int]] = {}
    for item in items:
        m = _ITEM.match(item.strip())
        if m is None:
            raise ConfigError(
                f"setting quotas: {item!r} is not a quota",
                "write each as user:NAME:runs=N or project:NAME@QUEUE:gpus=N (one limit each)",
            )
        where = scope(m["kind"], m["name"], m["queue"])
        out.setdefault(where, {})[m["limit"]] = int(m["value"])
    return out


def parse_weights(items: Iterable[str]) -> dict[str, float]:
    """The ``user_weights`` setting's items (``alice=2``) as user -> weight."""
    out: dict[str, float] = {}
    for item in items:
        m = _WEIGHT.match(item.strip())
        if m is None or float(m["value"]) <= 0:
            raise ConfigError(
                f"setting user_weights: {item!r} is not a weight",
                "write each as NAME=WEIGHT with a weight > 0, like alice=2",
            )
        out[m["name"]] = float(m["value"])
    return out


class Quotas:
    """The quotas kept in Redis, and the usage of each scope against its limits."""

    def __init__(self, store: RunStore, settings_limits: dict[str, dict[str, int]] | None = None):
        self.store, self.r, self.keys = store, store.r, store.keys
        self.settings_limits = settings_limits or {}

    def set(self, where: str, runs: int | None = None, gpus: int | None = None) -> dict[str, int]:
        """Set the limits given of scope ``where`` (None: that kind is left as it is, so raising
        one limit never lifts the other); returns the scope's limits now."""
        given = {k: v for k, v in (("runs", runs), ("gpus", gpus)) if v is not None}
        if not given:
            raise ConfigError(f"quota {where}: no limit given", "give --runs N, --gpus N or both")
        if any(v < 0 for v in given.values()):
            raise ConfigError(f"quota {where}: limits are counts >= 0", "give --runs 8, --gpus 4")
        kept = self.r.hget(self.keys.quotas(), where)
        limits = (json.loads(kept) if kept else {}) | given
        self.r.hset(self.keys.quotas(), where, json.dumps(limits))
        return dict(limits)

    def remove(self, where: str) -> bool:
        """Drop the Redis quota of scope ``where``; False when there was none."""
        return bool(self.r.hdel(self.keys.quotas(), where))

    def table(self) -> dict[str, tuple[dict[str, int], str]]:
        """Every quota in force: scope -> (limits, where it is set: 'redis' or 'settings')."""
        out = {k: (v, "settings") for k, v in self.settings_limits.items()}
        for where, raw in self.r.hgetall(self.keys.quotas()).items():
            out[where] = (json.loads(raw), "redis")
        return out

    def usage(self, kind: str, name: str) -> dict[str, Any]:
        """Runs and GPUs that ``kind`` ``name`` holds now: overall and per queue."""
        held = self.r.hgetall(self.keys.active(kind, name))
        pipe = self.r.pipeline(transaction=False)
        for run_id in held:
            pipe.exists(self.keys.claim(run_id))
        alive = [run_id for run_id, on in zip(held, pipe.execute(), strict=True) if on]
        out: dict[str, Any] = {"runs": 0, "gpus": 0, "queues": {}}
        for run_id in alive:
            queue, _, gpus = held[run_id].rpartition(" ")
            per = out["queues"].setdefault(queue, {"runs": 0, "gpus": 0})
            for row in (out, per):
                row["runs"] += 1
                row["gpus"] += int(gpus or 0)
        return out

    def report(self, kind: str = "user") -> list[dict[str, Any]]:
        """One row per quota of ``kind``: scope, limits, where set, and its usage now."""
        rows = []
        for where, (limits, source) in sorted(self.table().items()):
            k, _, rest = where.partition(":")
            if k != kind:
                continue
            name, _, queue = rest.partition("@")
            used = self.usage(kind, name)
            now = used["queues"].get(queue, {"runs": 0, "gpus": 0}) if queue else used
            rows.append({kind: name, "queue": queue or None, "limits": limits, "source": source,
                         "runs": now["runs"], "gpus": now["gpus"]})  # fmt: skip
        return rows
