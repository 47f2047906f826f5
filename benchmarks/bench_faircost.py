"""What fair order costs: trivial runs through an agent worker with the gate on (``fair_share``,
the default), against the same runs through an agent worker with it off (``fair_share = false``:
first in, first out, no quotas), same concurrency (2), same settings otherwise.

The submitting side follows: with the gate on a run joins its user's waiting set as it is
recorded, with it off it does not (the client's settings are switched between blocks). The blocks
alternate on, off, off, on, twice over, as in :mod:`.bench_throughput`; a side's rate is its runs
over the sum of its blocks' times. One user submits, so the gate admits every run: what is
measured is its bookkeeping (Redis round trips and scripts at submit, at a run's start and end).
Beside the rates, the CPU time per run of every process involved (this client, Redis, the side's
worker with its pool processes and the runs they spawned).

On a loaded 2-core machine those rates move by more than the gate costs, so the gate's own
writes are also timed alone, from this process on the benchmark's Redis: a run's record at
submit, its claim at a delivery and its end write, each with fair order off (the baseline), as
the gate does them now (riding on those round trips) and as it did before (a round trip of its own
at submit and at the claim). Modes alternate in rounds; medians per write.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import psutil
from celery.result import AsyncResult

from celery_agent import submit

from . import faircalls
from .bench_throughput import _elapsed
from .context import AGENT_QUEUE, Context
from .report import Row

OFF_QUEUE = "bench-nofair"  #: the queue of the worker with the gate off
TARGET = 0.95  #: runs per second with the gate on, as a fraction of those with it off


def run(ctx: Context) -> list[Row]:
    """Runs per second with fair order on and off, then the gate's writes alone."""
    return _throughput(ctx) + faircalls.rows(ctx.store, ctx.n(2000, 100))


def _throughput(ctx: Context) -> list[Row]:
    """Runs per second with fair order on and off."""
    n = ctx.n(400, 16)
    on_worker = ctx.agent()
    (off_worker,) = ctx.cluster.workers_together(
        [("celery_agent", OFF_QUEUE, {"CELERY_AGENT_FAIR_SHARE": "0"})]
    )
    on_spec = ctx.workload.spec("trivial.py", AGENT_QUEUE)
    off_spec = ctx.workload.spec("trivial.py", OFF_QUEUE)

    def on() -> AsyncResult:
        return submit(on_spec).result

    def off() -> AsyncResult:
        return submit(off_spec).result

    sides: dict[Callable[[], AsyncResult], bool] = {on: True, off: False}
    took, cpu = {on: 0.0, off: 0.0}, {on: 0.0, off: 0.0}
    runs = {on: 0, off: 0}
    shared = [os.getpid(), _pid(ctx.cluster.redis)]
    pids = {on: [*shared, _pid(on_worker)], off: [*shared, _pid(off_worker)]}
    try:
        for send in (on, off):  # warm both workers' pool children (the off worker's env too)
            _client(sides[send])
            _elapsed(send, 4, per_run=30.0)
        order = (on, off, off, on) * 2
        for i, send in enumerate(order):
            size = max(1, n // len(order) + (i < n % len(order)))
            _client(sides[send])
            before = _cpu(pids[send])
            took[send] += _elapsed(send, size)
            cpu[send] += _cpu(pids[send]) - before
            runs[send] += size
    finally:
        _client(True)
    rate_on, rate_off = runs[on] / took[on], runs[off] / took[off]
    cpu_on, cpu_off = cpu[on] / runs[on], cpu[off] / runs[off]
    name = f"fair order: {runs[on] + runs[off]} trivial runs, c=2, gate on (vs off)"
    return [Row(name, rate_on, rate_off, "/s", "ratio", f">= {TARGET}x",
                rate_on >= TARGET * rate_off),
            Row("  CPU per run, every process (client, Redis, worker, runs)", cpu_on, cpu_off,
                "ms", "ratio", "-", None)]  # fmt: skip


def _pid(process: object) -> int:
    proc = getattr(process, "proc", None)
    assert proc is not None, f"{process} is not running"
    return int(proc.pid)


def _cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) so far of ``pids``, their live descendants and the children
    they reaped (the runs' interpreters)."""
    total = 0.0
    for pid in pids:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                t = proc.cpu_times()
            except psutil.NoSuchProcess:  # (a run that ended meanwhile: its parent counts it)
                continue
            total += t.user + t.system + t.children_user + t.children_system
    return total


def _client(fair: bool) -> None:
    """Point this process's submitting side at fair order on or off."""
    from celery_agent.app import use_environment

    os.environ["CELERY_AGENT_FAIR_SHARE"] = "1" if fair else "0"
    use_environment()
