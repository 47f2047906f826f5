"""The runs table with 10,000 runs in Redis: the first page of ``/celery-agent/api/runs``.

10,000 run records (quick: 1,000) like real ones (a spec with a 4 KiB diff, 80 pinned packages,
timings, usage) are written to the benchmark's Redis; a real Flower (``celery -A celery_agent
flower``) serves the endpoint. Measured over HTTP: the first page (50 rows), the first page with
the last value of a metric per row, a filter on a tag one run in a hundred has (walked from the
tag's own index; its page fills from a scan of every run when that index is left out), and a
sort by duration (the newest 2,000 runs sorted). Baselines in the same run,
from the same process on the same Redis: ``celery-agent ls``'s read (``RunStore.list_runs(50)``:
whole records), and one ``HGETALL`` of one run record. Median of N requests each.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from typing import Any

from celery_agent.testing import FlowerProcess, wait_for

from .context import Context
from .report import Row, median

TARGET = 0.200  #: seconds for the first page with 10,000 runs recorded
DIFF = "diff --git a/train.py b/train.py\n" + "+x = 1\n" * 600
FREEZE = [f"package-{i}==1.{i}.0" for i in range(80)]


def run(ctx: Context) -> list[Row]:
    """The endpoint rows and their baselines."""
    runs = ctx.n(10_000, 1_000)
    ids = _record(ctx, runs)
    flower = FlowerProcess(ctx.cluster.url, ctx.root / "bench-flower.log", plain=True).start(60)
    url = flower.url
    try:
        _indexes_complete(ctx)
        n = ctx.n(30, 5)
        api = f"{url}/celery-agent/api/runs"
        _get(api)  # (first request: imports, connection pool)
        first = _timed(lambda: _get(api + "?limit=50"), n)
        metric = _timed(lambda: _get(api + "?limit=50&metrics=loss"), n)
        filtered = _timed(lambda: _get(api + "?limit=50&tag=rare"), n)
        ctx.store.r.delete(ctx.store.keys.runs_by_complete())  # (the scan, for comparison)
        scanned = _timed(lambda: _get(api + "?limit=50&tag=rare"), n)
        by_duration = _timed(lambda: _get(api + "?limit=50&sort=-duration"), n)
    finally:
        flower.stop()
    store = ctx.store
    ls_read = _timed(lambda: store.list_runs(50), n)
    hgetall = _timed(lambda: store.r.hgetall(store.keys.run(ids[len(ids) // 2])), n)
    head = f"runs page, {runs:,} runs"
    return [
        Row(f"{head}: first page (50) vs `ls` read", first, ls_read, "ms", "ratio",
            f"<= {TARGET * 1000:.0f} ms", first <= TARGET),
        Row(f"{head}: first page vs one HGETALL", first, hgetall, "ms", "ratio", "-", None),
        Row(f"{head}: first page + last loss per row", metric, ls_read, "ms", "ratio", "-", None),
        Row(f"{head}: tag filter matching 1 %, its index vs a scan", filtered, scanned, "ms",
            "ratio", "-", None),
        Row(f"{head}: sorted by duration (newest 2,000)", by_duration, ls_read, "ms", "ratio",
            "-", None),
    ]  # fmt: skip


def _record(ctx: Context, runs: int) -> list[str]:
    """Write ``runs`` finished run records (and one metric point each); their ids."""
    store = ctx.store
    ids = []
    for i in range(runs):
        run_id = f"bench-page-{i:06d}"
        spec = {
            "repo": "https://git.example/exp.git",
            "entry": "train.py",
            "diff": DIFF,
            "params": {"lr": 0.1 * (i % 7)},
            "tags": ["rare"] if i % 100 == 0 else ["common"],
        }
        store.create_run(run_id, spec, f"gpu{i % 4}", user=f"user{i % 5}")
        ids.append(run_id)
    pipe = store.r.pipeline(transaction=False)
    now = time.time()
    for i, run_id in enumerate(ids):
        store.transition(run_id, "succeeded", pipe=pipe, worker=f"w{i % 8}", attempt=1,
                         running_at=now - 100 - i % 50, exit_code=0, freeze=FREEZE,
                         timings={"source": 0.5, "env": 1.5, "run": 90.0},
                         usage={"cpu_seconds": 88.0, "max_rss_bytes": 2**30})  # fmt: skip
        pipe.xadd(store.keys.metrics(run_id), {"n": "loss", "v": repr(1 / (i + 1)), "s": "1"})
        if i % 500 == 499:
            pipe.execute()
    pipe.execute()
    return ids


def _indexes_complete(ctx: Context, timeout: float = 120) -> None:
    """Wait for the Flower just started to complete the per-tag/user/queue indexes."""
    store = ctx.store
    wait_for(
        "the runs table's indexes completed",
        lambda: store.r.exists(store.keys.runs_by_complete()),
        timeout,
        every=0.1,
    )


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return bytes(resp.read())


def _timed(fn: Callable[[], Any], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return median(times)
