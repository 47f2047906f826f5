"""The metrics endpoint's read of a long series: what serving a run's metrics costs over reading
its stream, first and on each refresh, and how much the downsampling spares the page.

One run with one metric of 200,000 points (the stream's cap) in a redis-server of
its own. Measured, median of 5 rounds (quick: 5,000 points, 1 round, targets not judged),
samples alternating with the baseline:

- first read: :func:`celery_agent.flowerui.series.run_series` with an empty cache (read the whole
  stream, decode, downsample to 2000 points) plus the JSON the endpoint writes;
- refresh: the same after 100 more points were reported (the cache reads only those), as the run
  page does every few seconds while a run goes on.

Baseline, same run: the stream's bare ``XRANGE`` (redis-py, decoded), which any reader of the
whole series pays. Also: the JSON's size served against the whole series as JSON.

    .venv/bin/python -m benchmarks.bench_metrics_api          # full size
    .venv/bin/python -m benchmarks.bench_metrics_api --quick
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from celery_agent.embedded import EmbeddedRedis, free_port
from celery_agent.flowerui.document import to_json
from celery_agent.flowerui.series import MAX_POINTS, SeriesCache, run_series
from celery_agent.metrics import Metric, append
from celery_agent.state import RunStore

from .report import Row, median, text_table

#: the first read may cost this many times the bare read of the stream
TARGET = 2.0
#: a refresh may cost this share of the bare read of the stream
REFRESH_TARGET = 0.1
RUN = "bench-metrics"


def fill(store: RunStore, start: int, stop: int) -> None:
    """Values ``start`` to ``stop`` of the run's metric ``loss``, written in batches."""
    batch = 5000
    for first in range(start, stop, batch):
        last = min(stop, first + batch)
        append(store, RUN, [Metric("loss", 1.0 / (1 + i), i) for i in range(first, last)])


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds ``fn()`` took, and what it returned."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(store: RunStore, points: int, rounds: int, judge: bool = True) -> list[Row]:
    """Rows: first read and refresh against the bare XRANGE, the JSON's size against the full
    (the targets judged unless ``judge`` is false: a small series only checks that it runs)."""
    store.create_run(RUN, {"entry": "train.py", "name": "bench"}, "bench")
    fill(store, 0, points)
    key = store.keys.metrics(RUN)
    first, refresh, bare, total = [], [], [], points
    for _ in range(rounds):
        bare.append(timed(lambda: store.r.xrange(key, "-", "+"))[0])
        cache = SeriesCache()
        took, body = timed(lambda c=cache: to_json(run_series(store, RUN, cache=c)))
        first.append(took)
        fill(store, total, total + 100)
        total += 100
        refresh.append(timed(lambda c=cache: to_json(run_series(store, RUN, cache=c)))[0])
    whole = to_json({"series": {"loss": [[i, 1.0 / (1 + i)] for i in range(points)]}})
    base = median(bare)
    return [
        Row(f"metrics api: first read, {points:,} points -> {MAX_POINTS}", median(first), base,
            "ms", "ratio", f"<= {TARGET:g}x XRANGE", (median(first) <= TARGET * base) if judge else None),
        Row("metrics api: refresh, 100 new points", median(refresh), base, "ms", "ratio",
            f"<= {REFRESH_TARGET:g}x XRANGE", (median(refresh) <= REFRESH_TARGET * base) if judge else None),
        Row(f"metrics api: JSON size, {points:,} points", float(len(body)), float(len(whole)),
            "B", "ratio", "reported", None),
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print its table; 1 when the target is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="5,000 points, 1 round: checks that it runs"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as home:
        server = EmbeddedRedis(Path(home), port=free_port()).start()
        try:
            store = RunStore.from_url(server.url)
            rows = (measure(store, 5_000, 1, judge=False) if args.quick
                    else measure(store, 200_000, 5))  # fmt: skip
        finally:
            server.stop()
    print(text_table(rows))
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
