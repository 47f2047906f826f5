"""Feedback without silent waits: how soon a submit to a queue nobody serves is told so, and how
soon a cancel ends a run stuck in its source stage.

- "no worker" notice: from calling ``submit`` to the :class:`NoWorkerWarning` (the CLI prints the
  same text at the same point). Baseline: a whole ``submit`` to a served queue, same run.
- cancel in the source stage: the run fetches from an http remote that takes the connection and
  never answers; once its git process runs, the cancel is requested and the run's record polled
  until ``aborted``. Baseline: the same request for a run whose script is running (its process
  killed through the pipeline's usual path), request -> ``aborted`` too.
"""

from __future__ import annotations

import socket
import time
import warnings
from typing import Any

import psutil

from celery_agent import submit
from celery_agent.serving import NoWorkerWarning

from .bench_cancel import _started_pids
from .context import AGENT_QUEUE, Context
from .report import Row, median

TARGET = 1.0  #: seconds, for both


def run(ctx: Context) -> list[Row]:
    """Measure both against their same-run baselines."""
    ctx.agent()
    n = ctx.n(10, 2)
    notice = [_notice_once(ctx) for _ in range(n)]
    plain = [_plain_submit(ctx) for _ in range(n)]
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/stalled.git"
        stuck = [_cancel_stuck(ctx, url) for _ in range(n)]
    running = [_cancel_running(ctx) for _ in range(n)]
    return [
        Row("feedback: submit -> 'no worker serves'", median(notice), median(plain), "ms",
            "diff", "< 1 s", median(notice) < TARGET),
        Row("feedback: cancel in source stage", median(stuck), median(running), "ms", "diff",
            "< 1 s", median(stuck) < TARGET),
    ]  # fmt: skip


def _notice_once(ctx: Context) -> float:
    """Seconds from calling submit to its no-worker warning (the run is then cancelled)."""
    seen: list[float] = []

    def shown(message: Any, category: type[Warning], *_: Any, **__: Any) -> None:
        if issubclass(category, NoWorkerWarning):
            seen.append(time.perf_counter())

    spec = ctx.workload.spec("trivial.py", f"nobody-{time.monotonic_ns()}")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = shown
        t0 = time.perf_counter()
        handle = submit(spec)
    handle.cancel()
    if not seen:
        raise RuntimeError("submit to a queue nobody serves gave no warning")
    return seen[0] - t0


def _plain_submit(ctx: Context) -> float:
    """Seconds a submit to the served agent queue takes (the run is then cancelled)."""
    t0 = time.perf_counter()
    handle = submit(ctx.workload.spec("trivial.py", AGENT_QUEUE))
    elapsed = time.perf_counter() - t0
    handle.cancel()
    handle.wait(timeout=60)
    return elapsed


def _cancel_stuck(ctx: Context, url: str) -> float:
    handle = submit({"repo": url, "entry": "train.py", "queue": AGENT_QUEUE, "executor": "local"})
    _wait(lambda: _fetching(url), f"no git process fetches {url}")
    return _cancel_until_aborted(ctx, handle)


def _cancel_running(ctx: Context) -> float:
    handle = submit(ctx.workload.spec("sleeper.py", AGENT_QUEUE, grace=0))
    ctx.cluster.strays.update(_started_pids(ctx, handle.id))
    return _cancel_until_aborted(ctx, handle)


def _cancel_until_aborted(ctx: Context, handle: Any) -> float:
    t0 = time.perf_counter()
    handle.cancel()
    _wait(lambda: ctx.store.get(handle.id).get("state") == "aborted", f"{handle.id} not aborted")
    return time.perf_counter() - t0


def _fetching(url: str) -> bool:
    return any(url in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))


def _wait(done: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.002)
