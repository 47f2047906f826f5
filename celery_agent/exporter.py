"""Prometheus metrics of the fleet, read from Redis on each scrape.

:class:`FleetCollector` is a ``prometheus_client`` collector: every scrape reads what it serves in
three pipelined round trips, never a scan of all runs or keys:

1. the ``workers`` index (with last-heartbeat scores), the run counters hash
   (:meth:`Keys.run_counts`, kept by the run store's scripts), the run histograms hash (run
   duration and queue wait per queue, :meth:`Keys.run_histograms`) and the env cache outcomes
   hash (per executor kind, :mod:`.envstats`);
2. each known worker's heartbeat hash and current-run set;
3. the state and queue of each run an online worker runs now, and the length of each queue's
   lists on the broker (the Redis transport keeps one list per priority level: ``queue``, then
   ``queue`` + ``"\\x06\\x16"`` + ``3``, ``6``, ``9``; all of them are summed).

Queues reported are those online workers serve plus any named to the collector. On a RabbitMQ
broker queue depth is each queue's ready messages, read by a passive declare (:mod:`.amqpdepth`),
with ``celery_agent_broker_up`` saying whether the broker answered. When Redis cannot be read
the scrape serves ``celery_agent_up 0`` and nothing else, not an error; a malformed heartbeat
record is skipped (logged) and the rest of the fleet is still served.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import envstats, histograms
from .amqpdepth import AmqpDepth
from .keys import Keys
from .state import ACTIVE
from .status import gpu_rows
from .workers import ONLINE, decode

logger = logging.getLogger(__name__)

#: what the Redis transport puts between a queue's name and its priority level
PRIORITY_SEP = "\x06\x16"
#: the transport's priority levels; level 0 is the queue's own list
PRIORITY_STEPS = (0, 3, 6, 9)
_COUNTERS = ("submitted", "requeued", "succeeded", "failed", "aborted", "timed_out", "lost")


def queue_lists(queue: str) -> list[str]:
    """The Redis lists that hold ``queue``'s messages, one per priority level."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


class FleetCollector(Collector):
    """Fleet metrics for a ``prometheus_client`` registry (see the module's docstring).

    ``client`` is the agent's Redis (``decode_responses=True``); ``broker`` the broker's Redis
    client when the broker is Redis, an :class:`.AmqpDepth` on RabbitMQ (None: no queue depth);
    ``queues`` are always reported.
    """

    def __init__(
        self, client: Any, keys: Keys, broker: Any = None, queues: Iterable[str] = ()
    ) -> None:
        self.r = client
        self.keys = keys
        self.broker = broker
        self.queues = sorted(set(queues))

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: the metrics are read on each scrape."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Read the fleet from Redis and yield its metrics (``celery_agent_up 0`` on failure)."""
        t0 = time.monotonic()
        up = GaugeMetricFamily("celery_agent_up", "1 when the exporter could read Redis")
        try:
            families = self._read()
        except Exception as exc:  # Redis down or refusing: served as up 0, never as a 500
            logger.warning("cannot read the fleet from Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families
        took = GaugeMetricFamily(
            "celery_agent_scrape_seconds", "how long reading the fleet from Redis took"
        )
        took.add_metric([], time.monotonic() - t0)
        yield took

    # -- reading --------------------------------------------------------------------------------
    def _read(self) -> list[Metric]:
        pipe = self.r.pipeline(transaction=False)
        pipe.zrange(self.keys.workers(), 0, -1, withscores=True)
        pipe.hgetall(self.keys.run_counts())
        pipe.hgetall(self.keys.run_histograms())
        pipe.hgetall(self.keys.env_cache_stats())
        seen, counts, hists, envs = pipe.execute()
        names = [name for name, _ in seen]
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.keys.worker(name))
            pipe.smembers(self.keys.worker_runs(name))  # fresher than the heartbeat's copy
        got = pipe.execute()
        pairs = zip(names, got[::2], got[1::2], strict=True)
        records = [_record(name, raw, sorted(runs)) for name, raw, runs in pairs]
        online = [rec for rec in records if rec is not None]
        queues = sorted(set(self.queues).union(*(rec.get("queues") or [] for rec in online)))
        runs = sorted({run for rec in online for run in rec.get("runs") or []})
        active, depth = self._runs_and_queues(runs, queues)
        return [
            *self._queue_metrics(depth),
            *self._run_metrics(active, counts),
            *histograms.families(hists, [histograms.RUN_DURATION, histograms.QUEUE_WAIT]),
            *envstats.families(envs),
            *self._worker_metrics(online, len(names), dict(seen)),
            *self._gpu_metrics(online),
        ]

    def _runs_and_queues(
        self, runs: list[str], queues: list[str]
    ) -> tuple[Counter[tuple[str, str]], dict[str, int] | None]:
        """(state, queue) counts of the active runs; each queue's depth (None: broker unknown or
        unreadable)."""
        amqp = isinstance(self.broker, AmqpDepth)
        lists_on = None if self.broker is None or amqp else self.broker
        pipe = self.r.pipeline(transaction=False)
        for run in runs:
            pipe.hmget(self.keys.run(run), ["state", "queue"])
        broker = None if lists_on is None or lists_on is self.r else lists_on.pipeline()
        for queue in queues if lists_on is not None else []:
            for name in queue_lists(queue):
                (broker if broker is not None else pipe).llen(name)
        got = pipe.execute()
        lengths = broker.execute() if broker is not None else got[len(runs) :]
        active: Counter[tuple[str, str]] = Counter()
        for state, queue in got[: len(runs)]:
            if state in ACTIVE:
                active[(state, queue or "")] += 1
        if amqp:
            return active, self._amqp_depth(queues)
        if lists_on is None:
            return active, None
        per = len(PRIORITY_STEPS)
        depth = {q: sum(lengths[i * per : (i + 1) * per]) for i, q in enumerate(queues)}
        return active, depth

    def _amqp_depth(self, queues: list[str]) -> dict[str, int] | None:
        try:
            return self.broker.depth(queues)
        except Exception as exc:  # the broker away: its depth is absent, the rest is served
            logger.warning("cannot read queue depth from the broker: %s", exc)
            return None

    # -- families -------------------------------------------------------------------------------
    def _queue_metrics(self, depth: dict[str, int] | None) -> list[Metric]:
        up: list[Metric] = []
        if isinstance(self.broker, AmqpDepth):
            broker = GaugeMetricFamily(
                "celery_agent_broker_up", "1 when the exporter could read queue depth from the broker"
            )  # fmt: skip
            broker.add_metric([], 0 if depth is None else 1)
            up.append(broker)
        if depth is None:
            return up
        family = GaugeMetricFamily(
            "celery_agent_queue_depth", "runs waiting in the queue (all priority levels)",
            labels=["queue"],
        )  # fmt: skip
        for queue, n in sorted(depth.items()):
            family.add_metric([queue], n)
        return [*up, family]

    def _run_metrics(
        self, active: Counter[tuple[str, str]], counts: dict[str, str]
    ) -> list[Metric]:
        runs = GaugeMetricFamily(
            "celery_agent_runs_active", "runs preparing or running on online workers",
            labels=["state", "queue"],
        )  # fmt: skip
        for (state, queue), n in sorted(active.items()):
            runs.add_metric([state, queue], n)
        submitted = CounterMetricFamily("celery_agent_runs_submitted", "runs submitted")
        submitted.add_metric([], _int(counts.get("submitted")))
        requeued = CounterMetricFamily(
            "celery_agent_runs_requeued", "active runs sent back to their queue (worker lost or drained)"
        )  # fmt: skip
        requeued.add_metric([], _int(counts.get("requeued")))
        lost = CounterMetricFamily(
            "celery_agent_runs_lost", "attempts whose runner was found gone (re-queued or ended lost)"
        )  # fmt: skip
        lost.add_metric([], _int(counts.get("lost_attempts")))
        ended = CounterMetricFamily("celery_agent_runs_ended", "runs that ended", labels=["state"])
        for state in _COUNTERS[2:]:
            ended.add_metric([state], _int(counts.get(state)))
        return [runs, submitted, requeued, lost, ended]

    def _worker_metrics(
        self, online: list[dict[str, Any]], known: int, seen: dict[str, float]
    ) -> list[Metric]:
        now = time.time()
        workers = GaugeMetricFamily(
            "celery_agent_workers", "known workers by state", labels=["state"]
        )
        workers.add_metric([ONLINE], len(online))
        workers.add_metric(["offline"], known - len(online))
        per_queue: Counter[str] = Counter(q for rec in online for q in rec.get("queues") or [])
        by_queue = GaugeMetricFamily(
            "celery_agent_queue_workers", "online workers serving the queue", labels=["queue"]
        )
        for queue, n in sorted(per_queue.items()):
            by_queue.add_metric([queue], n)
        age = GaugeMetricFamily(
            "celery_agent_heartbeat_age_seconds", "seconds since the worker's last heartbeat",
            labels=["worker"],
        )  # fmt: skip
        busy = GaugeMetricFamily(
            "celery_agent_worker_runs", "runs the worker runs now", labels=["worker"]
        )
        cache = GaugeMetricFamily(
            "celery_agent_env_cache_bytes", "bytes of the worker's environment cache",
            labels=["worker"],
        )  # fmt: skip
        envs = GaugeMetricFamily(
            "celery_agent_env_cache_entries",
            "environments in the worker's cache",
            labels=["worker"],
        )
        for rec in online:
            name = rec["name"]
            at = rec.get("at") or seen.get(name)
            if at:
                age.add_metric([name], max(0.0, now - at))
            busy.add_metric([name], len(rec.get("runs") or []))
            usage = rec.get("env_cache")
            if isinstance(usage, dict):
                cache.add_metric([name], _int(usage.get("bytes")))
                envs.add_metric([name], _int(usage.get("entries")))
        return [workers, by_queue, age, busy, cache, envs]

    def _gpu_metrics(self, online: list[dict[str, Any]]) -> list[Metric]:
        labels = ["host", "gpu", "uuid", "worker"]
        specs = {
            "util": ("celery_agent_gpu_utilization_percent", "GPU utilization"),
            "memory_used": ("celery_agent_gpu_memory_used_bytes", "GPU memory in use"),
            "memory_total": ("celery_agent_gpu_memory_total_bytes", "GPU memory"),
            "temperature": ("celery_agent_gpu_temperature_celsius", "GPU temperature"),
        }
        families = {k: GaugeMetricFamily(n, h, labels=labels) for k, (n, h) in specs.items()}
        try:
            rows = gpu_rows([r | {"state": ONLINE} for r in online])
        except (KeyError, TypeError, AttributeError) as exc:  # a heartbeat with a broken GPU list
            logger.warning("skipping GPU metrics: a heartbeat's GPU list is malformed: %s", exc)
            rows = []
        for row in rows:
            values = [row["host"], str(row["index"]), row["uuid"], ",".join(row["workers"])]
            for key, family in families.items():
                if isinstance(row.get(key), int | float):
                    family.add_metric(values, row[key])
        return list(families.values())


def _record(name: str, raw: dict[str, str], runs: list[str]) -> dict[str, Any] | None:
    """A worker's decoded heartbeat with its name and ``runs`` (its current-run set), or None when
    it has none or it is malformed."""
    if not raw:
        return None
    try:
        record = decode(raw) | {"name": name, "runs": runs}
        for field in ("queues", "runs"):
            value = record.get(field) or []
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise ValueError(f"{field} is not a list of names")
    except (ValueError, TypeError) as exc:
        logger.warning("skipping worker %s: its heartbeat record is malformed: %s", name, exc)
        return None
    return record


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def fleet_collector(
    redis_url: str, broker_url: str, prefix: str, queues: Iterable[str] = ()
) -> FleetCollector:
    """A collector on new connections to the agent's Redis and the broker (Redis or AMQP)."""
    from .defaults import is_amqp
    from .redisconn import connect

    client = connect(redis_url, decode_responses=True, socket_timeout=10)
    broker: Any = AmqpDepth(broker_url)
    if not is_amqp(broker_url):
        same = broker_url == redis_url
        broker = client if same else connect(broker_url, decode_responses=True, socket_timeout=10)
    return FleetCollector(client, Keys(prefix), broker, queues)
