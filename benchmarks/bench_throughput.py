"""Throughput: trivial runs through one agent worker (concurrency 2), against bare Celery tasks
that only spawn the same subprocess on a worker of the same concurrency and settings.

All runs are sent at once; the clock runs from the first send to the last result.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from celery.result import AsyncResult

from celery_agent import submit

from . import baseline_app
from .context import AGENT_QUEUE, BASELINE_QUEUE, Context
from .report import Row

TARGET = 0.8  #: the agent must reach this fraction of the baseline's runs per second


def run(ctx: Context) -> list[Row]:
    """Runs per second of the agent and of the baseline."""
    n = ctx.n(500, 20)
    spec = ctx.workload.spec("trivial.py", AGENT_QUEUE)
    argv = [ctx.env().python, str(ctx.workload.repo / "trivial.py")]
    ctx.agent()
    ctx.baseline()

    def agent_send() -> AsyncResult:
        return submit(spec).result

    def baseline_send() -> AsyncResult:
        return baseline_app.spawn.apply_async((argv, str(ctx.workload.repo)), queue=BASELINE_QUEUE)

    _rate(agent_send, 4)  # warm both pool children
    _rate(baseline_send, 4)
    agent, baseline = _rate(agent_send, n), _rate(baseline_send, n)
    return [Row(f"throughput: {n} trivial runs, c=2", agent, baseline, "/s", "ratio", ">= 0.8x",
                agent >= TARGET * baseline)]  # fmt: skip


def _rate(send: Callable[[], AsyncResult], n: int, per_run: float = 2.0) -> float:
    """Runs per second: ``n`` sends, then every result collected (all within ``per_run`` s each
    plus a minute, so a stuck run ends the benchmark with an error instead of hanging it)."""
    t0 = time.perf_counter()
    deadline = time.monotonic() + 60 + per_run * n
    results = [send() for _ in range(n)]
    for result in results:
        outcome = result.get(timeout=max(1.0, deadline - time.monotonic()))
        if isinstance(outcome, dict) and outcome.get("status") != "succeeded":
            raise RuntimeError(f"run {outcome.get('run_id')} ended {outcome.get('status')}")
        if isinstance(outcome, int) and outcome != 0:
            raise RuntimeError(f"the baseline subprocess exited {outcome}")
    return n / (time.perf_counter() - t0)
