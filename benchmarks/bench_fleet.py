"""Scale: 1,000 simulated workers (quick: 200) against one Redis of their own.

The Redis is started like the benchmark's (and ``celery-agent up``'s): append-only file, fsync
every second. :mod:`.fleet` first fills every worker's heartbeat and full hardware history (720
snapshots) and gives each one a run in flight, then sends the fleet's writes at the real default
rates for two windows (30 s each; quick: 4 s): heartbeats only, then heartbeats + runs. Redis CPU
is the change of ``used_cpu_user + used_cpu_sys`` (INFO cpu) over a window, as % of one core,
scaled to the planned load when the senders fell behind; memory is ``used_memory`` (INFO memory)
and ``MEMORY USAGE`` of sample keys. Rows project the measured cost to 1,000 workers and say how
many workers one Redis core carries at 50 % busy.

Between the two, with every worker's heartbeat and run in flight in place (and the senders idle),
one Prometheus scrape of the fleet (:class:`celery_agent.exporter.FleetCollector`) is timed as
Redis CPU per scrape, against the read of ``celery-agent status`` (``WorkerRegistry.overview``) in
the same run as the baseline; and against the same scrape before the run and env cache
histograms existed (their hashes set aside), once they hold every bucket of ``HIST_QUEUES`` queues
and three executors.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable

import redis

from .context import AGENT_QUEUE, Context
from .fleet import LINE, Fleet, Load
from .report import Row, median

AT = 1000  #: the fleet size the target is stated for
HIST_QUEUES = 20  #: queues whose run histograms the scrape reads
BUSY = 50.0  #: % of one core a Redis should stay under (headroom for bursts and the broker)


def run(ctx: Context) -> list[Row]:
    """Redis CPU and memory per simulated worker; workers per Redis core."""
    load = Load(workers=ctx.n(1000, 200))
    window = ctx.n(30, 4)
    server = ctx.cluster.extra_redis("redis-fleet")
    try:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        fleet = Fleet(server.url, load, ctx.workload.spec("train.py", AGENT_QUEUE).to_json())
        memory = _memory_rows(client, fleet, load)
        fleet.beat_all(ttl=300)  # every heartbeat current while the scrapes are timed
        scrape = _scrape_rows(client, ctx.n(10, 3), load.workers)
        beats = _cpu_row(client, fleet, load, window, runs=False)
        both = _cpu_row(client, fleet, load, window, runs=True)
        runs = _run_rows(client, fleet)
    finally:
        server.stop()
    return [*beats, *both, *memory, *scrape, *runs]


def _memory_rows(client: redis.Redis, fleet: Fleet, load: Load) -> list[Row]:
    empty = _used_memory(client)
    fleet.fill_history(load.history)
    full = _used_memory(client)
    fleet.start_runs()
    per_worker = (full - empty) / load.workers
    return [Row(f"fleet: Redis memory per worker (record + {load.history} snapshots)", per_worker,
                None, "B", "none", "-", None)]  # fmt: skip


def _cpu_row(client: redis.Redis, fleet: Fleet, load: Load, window: float, runs: bool) -> list[Row]:
    """Redis CPU over one window of the fleet's writes, projected to ``AT`` workers."""
    before, t0 = _cpu(client), time.monotonic()
    sent = fleet.drive(window, runs)
    busy, seconds = _cpu(client) - before, time.monotonic() - t0
    achieved = sum(sent.values()) / load.planned(seconds, runs)
    print(f"  fleet, {seconds:.0f}s: sent {_mix(sent)}", file=sys.stderr, flush=True)
    per_worker = 100 * busy / seconds / (load.workers * min(1.0, achieved))
    what = "heartbeats + runs" if runs else "heartbeats"
    n = load.workers
    head = f"fleet: {what}, Redis CPU at {AT:,} workers (measured {n:,})"
    return [
        Row(head, per_worker * AT, None, "%", "none", f"< {BUSY:g} % of a core",
            per_worker * AT < BUSY if runs else None),
        Row(f"  part: workers one Redis core carries at {BUSY:g} %, {what}", BUSY / per_worker,
            None, "n", "none", "-", None),
        Row(f"  part: {what}: round trips sent / planned", achieved, None, "x", "none", "-",
            None),
    ]  # fmt: skip


def _scrape_rows(client: redis.Redis, repeat: int, workers_up: int) -> list[Row]:
    """Redis CPU of one exporter scrape of the whole fleet, and of one status read (baseline);
    it passes only when the scrape saw all ``workers_up`` workers online."""
    from prometheus_client import CollectorRegistry, generate_latest

    from celery_agent.exporter import FleetCollector
    from celery_agent.keys import Keys
    from celery_agent.workers import WorkerRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(client, Keys(), client, [AGENT_QUEUE]))
    workers = WorkerRegistry(client, Keys())
    text = b""

    def scrape() -> None:
        nonlocal text
        text = generate_latest(registry)

    hashes = [key for key in (Keys().run_histograms(), Keys().env_cache_stats())
              if client.exists(key)]  # fmt: skip
    for key in hashes:  # set aside: the scrape as it was before there were histograms
        client.rename(key, f"{key}:aside")
    bare, _ = _redis_cpu(client, scrape, repeat)
    for key in hashes:
        client.rename(f"{key}:aside", key)
    _fill_histograms(client)
    scraped, wall = _redis_cpu(client, scrape, repeat)
    overview, _ = _redis_cpu(client, workers.overview, repeat)
    samples = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    online = next((float(line.split()[-1]) for line in text.decode().splitlines()
                   if line.startswith('celery_agent_workers{state="online"}')), 0.0)  # fmt: skip
    print(f"  fleet scrape: {online:.0f} workers online, {samples:,} samples, {len(text):,} bytes,"
          f" {wall * 1000:.0f} ms wall", file=sys.stderr, flush=True)  # fmt: skip
    return [
        Row("fleet: Redis CPU per exporter scrape (baseline: status read)", scraped, overview,
            "ms", "ratio", "< 1 s (a core-second)", scraped < 1.0 and online == workers_up),
        Row("  part: exporter scrape wall time, client side included", wall, None, "ms", "none",
            "-", None),
        Row(f"  part: Redis CPU per scrape with histograms of {HIST_QUEUES} queues (baseline: "
            "none, as before them)", scraped, bare, "ms", "ratio", "-", None),
    ]  # fmt: skip


def _fill_histograms(client: redis.Redis) -> None:
    """Every bucket of the run histograms of ``HIST_QUEUES`` queues and of the env cache
    histogram of three executors observed once, as a long-lived fleet's hashes have them."""
    from celery_agent import envstats, histograms
    from celery_agent.keys import Keys

    keys, pipe = Keys(), client.pipeline(transaction=False)
    for i in range(HIST_QUEUES):
        for h in (histograms.RUN_DURATION, histograms.QUEUE_WAIT):
            for bound in (*h.upper, h.upper[-1] * 2):
                histograms.observe(pipe, keys.run_histograms(), h, f"queue{i}", bound)
    for kind in ("venv", "conda", "docker"):
        for bound in (*histograms.ENV_BUILD.upper, 1e9):
            envstats.count(pipe, keys, kind, envstats.BUILT, bound)
        envstats.count(pipe, keys, kind, envstats.HIT, 0.0)
    pipe.execute()


def _redis_cpu(client: redis.Redis, call: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(Redis CPU seconds, wall seconds) of one ``call``, the median of ``repeat``."""
    cpu, wall = [], []
    for _ in range(repeat):
        before, t0 = _cpu(client), time.perf_counter()
        call()
        wall.append(time.perf_counter() - t0)
        cpu.append(_cpu(client) - before)
    return median(cpu), median(wall)


def _run_rows(client: redis.Redis, fleet: Fleet, sample: int = 20) -> list[Row]:
    """Memory of a finished run record and of one log line (the run's log stream)."""
    ended = fleet.finish_runs(sample)
    store = fleet.store()
    record = median([_usage(client, store.keys.run(run_id)) for run_id in ended])
    log_key = store.keys.log("bench-log-size")
    lines = [LINE.format(n=i) for i in range(fleet.load.lines_per_chunk)]
    for _ in range(1000):
        store.append_log("bench-log-size", lines)
    per_line = _usage(client, log_key) / (1000 * fleet.load.lines_per_chunk)
    return [
        Row("  part: memory per finished run record", record, None, "B", "none", "-", None),
        Row("  part: memory per log line (3-line chunks)", per_line, None, "B", "none", "-", None),
    ]


def _mix(sent: Counter[str]) -> str:
    return ", ".join(f"{kind} {count:,}" for kind, count in sorted(sent.items()))


def _cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _used_memory(client: redis.Redis) -> float:
    return float(client.info("memory")["used_memory"])


def _usage(client: redis.Redis, key: str) -> float:
    return float(client.memory_usage(key, samples=0) or 0)
