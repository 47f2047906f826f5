"""Heartbeat overhead: what the heartbeat thread costs the worker's main process.

Two agent workers (concurrency 1) run side by side over the same window: one beats every
``heartbeat_interval`` (5 s by default), the baseline every 10^6 s (it beats once at start, then
never again: the interval cannot be turned off). The difference of their main processes' CPU
time over the window, as % of one core, is the heartbeat's cost. Quick mode shortens the window
to 6 s and the interval in proportion (same number of beats), then scales the difference back
to the default interval. In this process: the time of one ``Monitor.snapshot()`` and of one
``Heartbeat.beat()`` (snapshot + the registry's writes) against the benchmark's Redis.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import psutil

from celery_agent.monitoring import Monitor
from celery_agent.settings import Settings
from celery_agent.worker import Heartbeat
from celery_agent.workers import WorkerRegistry

from .cluster import Worker
from .context import Context
from .report import Row, median

TARGET = 1.0  #: % of one core the heartbeat may cost at the default interval
NEVER = 1e6  #: the baseline's interval, seconds


def run(ctx: Context) -> list[Row]:
    """The heartbeat's CPU share in a real worker, and the time of one snapshot and one beat."""
    return _overhead(ctx) + _one_beat(ctx)


def _overhead(ctx: Context) -> list[Row]:
    default = Settings().heartbeat_interval
    window = ctx.n(60, 6)
    interval = default * window / 60  # the full run's number of beats in the quick window
    on, off = ctx.cluster.workers_together(
        [
            ("celery_agent", "bench-hb-on", _interval_env(interval)),
            ("celery_agent", "bench-hb-off", _interval_env(NEVER)),
        ],
        concurrency=1,
    )
    try:
        busy_on, busy_off = _cpu_over(window, ctx.n(2, 1), on, off)
    finally:
        on.stop()
        off.stop()
    scale = interval / default  # a beat costs the same; at the default interval there are fewer
    on_pct, off_pct = (100 * busy / window for busy in (busy_on, busy_off))
    cost = (on_pct - off_pct) * scale
    beats = window / interval
    name = f"heartbeat: worker main process CPU, beat every {default:g} s"
    return [
        Row(name, off_pct + cost, off_pct, "%", "diff", "< +1 % of a core", cost < TARGET),
        Row(
            "  part: CPU per beat (main process)",
            (busy_on - busy_off) / beats,
            None,
            "ms",
            "none",
            "-",
            None,
        ),  # fmt: skip
    ]


def _interval_env(seconds: float) -> dict[str, str]:
    return {"CELERY_AGENT_HEARTBEAT_INTERVAL": f"{seconds:g}"}


def _cpu_over(window: float, settle: float, *workers: Worker) -> tuple[float, float]:
    """CPU seconds (user + system) each worker's main process used over ``window`` seconds,
    ``settle`` seconds after they said they were ready."""
    time.sleep(settle)
    procs = [psutil.Process(w.proc.pid) for w in workers if w.proc is not None]
    before = [_cpu(p) for p in procs]
    time.sleep(window)
    after = [_cpu(p) for p in procs]
    on, off = (b - a for a, b in zip(before, after, strict=True))
    return on, off


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _one_beat(ctx: Context) -> list[Row]:
    """Median wall time of one snapshot and one beat, measured in this process."""
    n = ctx.n(50, 10)
    monitor = Monitor()
    snapshot = _timed(monitor.snapshot, n)
    registry = WorkerRegistry(ctx.store.r, ctx.store.keys)
    record = _record("bench-beat@" + socket.gethostname())
    heartbeat = Heartbeat(registry, record, Settings().heartbeat_interval, history=720)
    try:
        beat = _timed(heartbeat.beat, n)
    finally:
        registry.stopped(record["name"])
        registry.trim(time.time() + 1)
    return [
        Row("  part: one Monitor.snapshot()", snapshot, None, "ms", "none", "-", None),
        Row("  part: one beat (snapshot + writes)", beat, None, "ms", "none", "-", None),
    ]


def _timed(fn: Callable[[], Any], n: int) -> float:
    """Median seconds of ``n`` calls of ``fn`` (after one call that primes it)."""
    fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return median(samples)


def _record(name: str) -> dict[str, Any]:
    """The static part of a heartbeat, as :func:`celery_agent.worker.worker_record` makes it."""
    return {"name": name, "hostname": socket.gethostname(), "pid": 0, "started_at": time.time(),
            "queues": ["bench"], "concurrency": 1, "gpu_mode": "none", "gpus": [],
            "interval": Settings().heartbeat_interval}  # fmt: skip
