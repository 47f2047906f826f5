"""What fair order costs: trivial runs through an agent worker with the gate on (``fair_share``,
the default), against the same runs through an agent worker with it off (``fair_share = false``:
first in, first out, no quotas), same concurrency (2), same settings otherwise; in two phases
that swap which of two workers started together has the gate on.

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
from celery_agent.app import use_environment

from . import faircalls
from .bench_throughput import _elapsed
from .context import Context
from .report import Row

FAIR_ENV = "CELERY_AGENT_FAIR_SHARE"
TARGET = 0.95  #: runs per second with the gate on, as a fraction of those with it off


def run(ctx: Context) -> list[Row]:
    """Runs per second with fair order on and off, then the gate's writes alone."""
    return _throughput(ctx) + faircalls.rows(ctx.store, ctx.n(2000, 100))


def _throughput(ctx: Context) -> list[Row]:
    """Runs per second with fair order on and off: two phases, each with two fresh workers
    started together, the first with the gate on in one phase and off in the other (an A/A run
    of this benchmark - both on - measured 0.86x: a worker's own speed differs by more than the
    gate costs, and the swap cancels it)."""
    took, cpu, runs = {True: 0.0, False: 0.0}, {True: 0.0, False: 0.0}, {True: 0, False: 0}
    saved = os.environ.get(FAIR_ENV)
    try:
        for phase, first_on in enumerate((True, False)):
            _phase(ctx, phase, first_on, ctx.n(200, 8), took, cpu, runs)
    finally:  # (the client's settings as they were)
        os.environ.pop(FAIR_ENV, None)
        if saved is not None:
            os.environ[FAIR_ENV] = saved
        use_environment()
    rate_on, rate_off = runs[True] / took[True], runs[False] / took[False]
    cpu_on, cpu_off = cpu[True] / runs[True], cpu[False] / runs[False]
    name = f"fair order: {runs[True] + runs[False]} trivial runs, c=2, gate on (vs off)"
    return [Row(name, rate_on, rate_off, "/s", "ratio", f">= {TARGET}x",
                rate_on >= TARGET * rate_off),
            Row("  CPU per run, every process (client, Redis, worker, runs)", cpu_on, cpu_off,
                "ms", "ratio", "-", None)]  # fmt: skip


def _phase(ctx: Context, phase: int, first_on: bool, n: int, took: dict[bool, float],
           cpu: dict[bool, float], runs: dict[bool, int]) -> None:  # fmt: skip
    """``n`` runs over two fresh workers, the first started with the gate ``first_on``."""
    fair = (first_on, not first_on)
    queues = [f"bench-fair{phase}-{i}" for i in range(2)]
    workers = ctx.cluster.workers_together(
        [
            ("celery_agent", q, {FAIR_ENV: "1" if on else "0"})
            for q, on in zip(queues, fair, strict=True)
        ]
    )
    specs = {on: ctx.workload.spec("trivial.py", q) for q, on in zip(queues, fair, strict=True)}
    shared = [os.getpid(), _pid(ctx.cluster.redis)]
    pids = {on: [*shared, _pid(w)] for w, on in zip(workers, fair, strict=True)}
    sends: dict[bool, Callable[[], AsyncResult]] = {
        on: (lambda spec=spec: submit(spec).result) for on, spec in specs.items()
    }
    try:
        for on in (True, False):  # warm both workers' pool children and envs
            _client(on)
            _elapsed(sends[on], 4, per_run=30.0)
        order = (True, False, False, True) * 2
        for i, on in enumerate(order):
            size = max(1, n // len(order) + (i < n % len(order)))
            _client(on)
            cpu0 = _cpu(pids[on])
            took[on] += _elapsed(sends[on], size)
            cpu[on] += _cpu(pids[on]) - cpu0
            runs[on] += size
    finally:
        for worker in workers:
            worker.stop()


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
    os.environ[FAIR_ENV] = "1" if fair else "0"
    use_environment()
