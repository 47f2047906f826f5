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

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from celery_agent.embedded import free_port

from .context import Context
from .report import Row, median

TARGET = 0.200  #: seconds for the first page with 10,000 runs recorded
DIFF = "diff --git a/train.py b/train.py\n" + "+x = 1\n" * 600
FREEZE = [f"package-{i}==1.{i}.0" for i in range(80)]


def run(ctx: Context) -> list[Row]:
    """The endpoint rows and their baselines."""
    runs = ctx.n(10_000, 1_000)
    ids = _record(ctx, runs)
    url = _flower(ctx)
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
        _stop(url)
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
    store, deadline = ctx.store, time.monotonic() + timeout
    while not store.r.exists(store.keys.runs_by_complete()):
        if time.monotonic() > deadline:
            raise RuntimeError("the runs table's indexes were not completed")
        time.sleep(0.1)


def _flower(ctx: Context) -> str:
    port = free_port()
    env = dict(os.environ, CELERY_AGENT_REDIS_URL=ctx.cluster.url)
    argv = [sys.executable, "-m", "celery", "-A", "celery_agent", "flower", f"--port={port}",
            "--address=127.0.0.1"]  # fmt: skip
    log = (ctx.root / "bench-flower.log").open("wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    _procs[url] = proc
    deadline = time.monotonic() + 60
    while True:
        try:
            if _get(url + "/healthcheck") == b"OK":
                return url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(url)
            raise RuntimeError(f"flower did not start: see {ctx.root / 'bench-flower.log'}")
        time.sleep(0.2)


_procs: dict[str, subprocess.Popen[bytes]] = {}


def _stop(url: str) -> None:
    proc = _procs.pop(url)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


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
