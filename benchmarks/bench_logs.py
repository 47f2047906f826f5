"""Log streaming: volume (many lines through the agent) and latency (print -> readable in Redis).

Volume: the run stage's wall time (``timings.run``) of a script printing 200,000 lines, against
the same script run by hand in the same env with its output sent to /dev/null, unbuffered as the
agent runs every script (``PYTHONUNBUFFERED=1``: a printed line reaches the log at once); the
block-buffered run by hand is shown beside it. Latency: a script
prints a wall-clock stamp every 50 ms; this process follows the run's log stream with XREAD BLOCK
and takes receive time minus print time for every line.
"""

from __future__ import annotations

import os
import subprocess
import time

from celery_agent import submit

from .context import AGENT_QUEUE, Context
from .report import Row, median, p90

VOLUME_RATIO = 1.3  #: the agent's run stage may take this many times the bare run
LATENCY = 0.200  #: a printed line must be readable in Redis within this many seconds


def run(ctx: Context) -> list[Row]:
    """Measure log volume overhead and print-to-Redis latency."""
    return _volume(ctx) + _latency(ctx)


def _volume(ctx: Context) -> list[Row]:
    lines, repeats = ctx.n(200_000, 20_000), ctx.n(3, 1)
    spec = ctx.workload.spec("spam.py", AGENT_QUEUE, str(lines))
    agent = []
    for _ in range(repeats):
        summary = ctx.submit_and_wait(spec)
        if summary["log_lines"] != lines:
            raise RuntimeError(f"the agent delivered {summary['log_lines']} of {lines} lines")
        agent.append(float(summary["timings"]["run"]))
    argv = [ctx.env().python, str(ctx.workload.repo / "spam.py"), str(lines)]
    bare = [_devnull_run(argv, unbuffered=True) for _ in range(repeats)]
    buffered = [_devnull_run(argv, unbuffered=False) for _ in range(repeats)]
    measured, baseline = median(agent), median(bare)
    name = f"log volume: {lines // 1000}k lines, run stage"
    return [
        Row(name, measured, baseline, "s", "ratio", "<= 1.3x", measured <= VOLUME_RATIO * baseline),
        Row("  part: by hand, block-buffered stdout", median(buffered), baseline, "s", "ratio",
            "-", None),
    ]  # fmt: skip


def _devnull_run(argv: list[str], *, unbuffered: bool) -> float:
    """The script by hand, output to /dev/null; ``unbuffered`` as the agent runs every script
    (a line must reach the log as it is printed), else Python's default block buffering."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env |= {"PYTHONUNBUFFERED": "1"} if unbuffered else {}
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, env=env)
    return time.perf_counter() - t0


def _latency(ctx: Context) -> list[Row]:
    ticks = ctx.n(100, 20)
    ctx.agent()
    handle = submit(ctx.workload.spec("ticker.py", AGENT_QUEUE, str(ticks)))
    delays = _follow(ctx, handle.id, ticks)
    handle.result.get(timeout=60)
    p50, high = median(delays), p90(delays)
    return [
        Row("log latency p50: print -> XREAD", p50, None, "ms", "none", "< 200 ms", p50 < LATENCY),
        Row(
            "log latency p90: print -> XREAD", high, None, "ms", "none", "< 200 ms", high < LATENCY
        ),
    ]


def _follow(ctx: Context, run_id: str, ticks: int, timeout: float = 120) -> list[float]:
    """Receive-minus-print delays of the run's tick lines, read as they arrive."""
    key, after = ctx.store.keys.log(run_id), "0-0"
    delays: list[float] = []
    deadline = time.monotonic() + timeout
    while len(delays) < ticks:
        if time.monotonic() > deadline:
            raise TimeoutError(f"got {len(delays)} of {ticks} tick lines from run {run_id}")
        for _, entries in ctx.store.r.xread({key: after}, block=1000, count=100) or []:
            received = time.time()
            for entry_id, data in entries:
                after = entry_id
                delays += [received - float(line.split()[1]) for line in data["l"].split("\n")
                           if line.startswith("tick ")]  # fmt: skip
    return delays
