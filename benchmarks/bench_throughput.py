"""Throughput: trivial runs through one agent worker (concurrency 2), against bare Celery tasks
that only spawn the same subprocess on a worker of the same concurrency and settings.

The runs go in blocks that alternate agent, baseline, baseline, agent, twice over (eight
blocks), so that a machine that gets faster or slower during the measurement (a 2-core VM's
neighbours, which move the rate by 10-30 % within seconds) weighs on both sides alike. In a
block all its runs are sent at once; its clock runs from the first send to the last result. A
side's rate is its runs over the sum of its blocks' times.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

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

    _elapsed(agent_send, 4)  # warm both pool children
    _elapsed(baseline_send, 4)
    order = (agent_send, baseline_send, baseline_send, agent_send) * 2
    took = {agent_send: 0.0, baseline_send: 0.0}
    runs = {agent_send: 0, baseline_send: 0}
    for i, send in enumerate(order):  # (n split over the blocks: each side gets n / 2)
        size = max(1, n // len(order) + (i < n % len(order)))
        took[send] += _elapsed(send, size)
        runs[send] += size
    agent, baseline = runs[agent_send] / took[agent_send], runs[baseline_send] / took[baseline_send]
    n = sum(runs.values())
    folders = _folders(ctx.root / "folder-probe", FOLDERS)
    return [Row(f"throughput: {n} trivial runs, c=2", agent, baseline, "/s", "ratio", ">= 0.8x",
                agent >= TARGET * baseline),
            Row(f"  part: making {FOLDERS} run folders (folder, output/, log file)", folders, None,
                "ms", "none", "-", None)]  # fmt: skip


FOLDERS = 100  #: run folders made by the file system probe


def _folders(root: Path, n: int) -> float:
    """Seconds to make ``n`` run folders as a worker makes one per run (the folder, its output/
    and a log file). This is where a file system slow to hand out new inodes - ext4 without a
    journal, for minutes after many files were deleted - costs the agent and not the baseline;
    the row shows the state the throughput was measured in. The folders stay: deleting them
    would slow the allocations after them."""
    root.mkdir()
    t0 = time.perf_counter()
    for i in range(n):
        run = root / str(i)
        run.mkdir()
        (run / "output").mkdir()
        (run / "log.txt").write_text("x\n")
    return time.perf_counter() - t0


def _elapsed(send: Callable[[], AsyncResult], n: int, per_run: float = 2.0) -> float:
    """Seconds for ``n`` sends and every result collected (all within ``per_run`` s each plus a
    minute, so a stuck run ends the benchmark with an error instead of hanging it)."""
    t0 = time.perf_counter()
    deadline = time.monotonic() + 60 + per_run * n
    results = [send() for _ in range(n)]
    for result in results:
        outcome = result.get(timeout=max(1.0, deadline - time.monotonic()))
        if isinstance(outcome, dict) and outcome.get("status") != "succeeded":
            raise RuntimeError(f"run {outcome.get('run_id')} ended {outcome.get('status')}")
        if isinstance(outcome, int) and outcome != 0:
            raise RuntimeError(f"the baseline subprocess exited {outcome}")
    return time.perf_counter() - t0
