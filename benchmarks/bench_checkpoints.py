"""Checkpoint sync: does copying a run's checkpoints while it runs slow its log or its worker's
heartbeat?

A script prints a wall-clock stamp every 50 ms and writes a checkpoint of 32 MiB (quick: 4 MiB)
every second (to a temporary name, renamed, two names in turn) for 10 s (quick: 4 s). It runs on
the agent worker with ``checkpoint_sync=0.2`` (a round every 0.2 s: each checkpoint is copied to
the worker's artifact store about a second after it is written) and, as the baseline, with
``checkpoint_sync=0`` (no round while it runs; the one sync after its end is outside the
measure), alternating. Measured in each run: print -> readable in Redis of every stamp (this
process follows the log stream with XREAD BLOCK), and the largest gap between the worker's
heartbeats while the run ran (entries of its hardware stream).
"""

from __future__ import annotations

import socket
from typing import Any

from celery_agent import submit

from .bench_logs import _follow
from .context import AGENT_QUEUE, Context
from .report import Row, median, p90

LATENCY_SLACK = 0.050  #: seconds the sync may add to the log's p90 latency
BEAT_SLACK = 0.5  #: seconds the sync may add to the largest heartbeat gap


def run(ctx: Context) -> list[Row]:
    """Log latency and heartbeat gaps of a checkpointing run, synced every 0.2 s and not."""
    ticks, mib = ctx.n(200, 80), ctx.n(32, 4)
    ctx.agent()
    synced: dict[str, list[float]] = {"lat": [], "gap": [], "uploads": []}
    plain: dict[str, list[float]] = {"lat": [], "gap": [], "uploads": []}
    for _ in range(ctx.n(3, 1)):
        for interval, into in ((0.2, synced), (0.0, plain)):
            _one(ctx, ticks, mib, interval, into)
    if min(synced["uploads"]) < 2:
        raise RuntimeError(f"the synced runs copied too few checkpoints: {synced['uploads']}")
    what = f"{mib} MiB/s of checkpoints, synced every 0.2 s vs not"
    lat_on, lat_off = p90(synced["lat"]), p90(plain["lat"])
    gap_on, gap_off = max(synced["gap"]), max(plain["gap"])
    return [
        Row(f"checkpoints: log latency p90, {what}", lat_on, lat_off, "ms", "diff",
            f"<= +{LATENCY_SLACK * 1000:.0f} ms", lat_on - lat_off <= LATENCY_SLACK),
        Row("  part: log latency p50", median(synced["lat"]), median(plain["lat"]), "ms",
            "diff", "-", None),
        Row(f"checkpoints: largest heartbeat gap, {what}", gap_on, gap_off, "s", "diff",
            f"<= +{BEAT_SLACK:g} s", gap_on - gap_off <= BEAT_SLACK),
        Row("  part: checkpoints copied per synced run", median(synced["uploads"]), None, "n",
            "none", "-", None),
    ]  # fmt: skip


def _one(ctx: Context, ticks: int, mib: int, interval: float, into: dict[str, list[float]]) -> None:
    spec = ctx.workload.spec("checkpointer.py", AGENT_QUEUE, str(ticks), str(mib),
                             checkpoint_sync=interval)  # fmt: skip
    handle = submit(spec)
    into["lat"] += _follow(ctx, handle.id, ticks)
    summary: dict[str, Any] = handle.result.get(timeout=120)
    if summary.get("status") != "succeeded":
        raise RuntimeError(f"run {handle.id} ended {summary.get('status')}: {summary.get('error')}")
    record = ctx.store.get(handle.id)
    into["gap"].append(
        _largest_gap(ctx, float(record["running_at"]), float(record["succeeded_at"]))
    )
    into["uploads"].append(float((summary.get("checkpoints") or {}).get("uploads", 0)))


def _largest_gap(ctx: Context, start: float, end: float) -> float:
    """The largest time between two heartbeats of the agent worker from ``start`` to ``end``."""
    name = f"{AGENT_QUEUE}@{socket.gethostname()}"
    key = ctx.store.keys.worker_history(name)
    entries = ctx.store.r.xrange(key, min=f"{int(start * 1000) - 5000}", max=f"{int(end * 1000)}")
    stamps = [int(entry_id.split("-")[0]) / 1000 for entry_id, _ in entries]
    stamps += [end]
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False) if b > start]
    return max(gaps, default=end - start)
