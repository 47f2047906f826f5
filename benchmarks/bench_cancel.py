"""Cancel: from the request to the run's whole process tree gone (grace 0), median over N.

The script starts a child of its own and prints both pids; once that line is in the log, the
request is made (``RunStore.request_abort``, what ``RunHandle.cancel`` and the CLI call) and the
pids are polled until neither runs. Baseline: the same tree started by hand and killed with one
``killpg(SIGKILL)``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

from celery_agent import submit

from .cluster import gone
from .context import AGENT_QUEUE, Context
from .report import Row, median

TARGET = 1.0  #: seconds from request to tree gone


def run(ctx: Context) -> list[Row]:
    """Measure cancel latency against a kill by hand."""
    n = ctx.n(20, 3)
    agent = [_cancel_once(ctx) for _ in range(n)]
    by_hand = [_kill_by_hand(ctx) for _ in range(n)]
    measured = median(agent)
    return [Row("cancel: request -> tree gone", measured, median(by_hand), "ms", "diff", "< 1 s",
                measured < TARGET)]  # fmt: skip


def _cancel_once(ctx: Context) -> float:
    ctx.agent()
    handle = submit(ctx.workload.spec("sleeper.py", AGENT_QUEUE, grace=0))
    pids = _started_pids(ctx, handle.id)
    ctx.cluster.strays.update(pids)
    t0 = time.perf_counter()
    handle.cancel()
    elapsed = _wait_gone(pids, t0)
    outcome = handle.result.get(timeout=60)
    if outcome["status"] != "aborted":
        raise RuntimeError(f"cancelled run {handle.id} ended {outcome['status']}")
    return elapsed


def _started_pids(ctx: Context, run_id: str, timeout: float = 60) -> list[int]:
    """The pids the script printed, read from its log stream as soon as the line lands."""
    key, after = ctx.store.keys.log(run_id), "0-0"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, entries in ctx.store.r.xread({key: after}, block=500) or []:
            for entry_id, data in entries:
                after = entry_id
                for line in data["l"].split("\n"):
                    if line.startswith("started "):
                        return [int(pid) for pid in line.split()[1:]]
    raise TimeoutError(f"run {run_id} never printed its pids")


def _wait_gone(pids: list[int], t0: float, timeout: float = 30) -> float:
    """Seconds from ``t0`` until none of ``pids`` runs."""
    while not all(gone(pid) for pid in pids):
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"processes {pids} still run {timeout}s after the cancel")
        time.sleep(0.002)
    return time.perf_counter() - t0


def _kill_by_hand(ctx: Context) -> float:
    script = str(ctx.workload.repo / "sleeper.py")
    proc = subprocess.Popen(
        [ctx.env().python, script], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
        start_new_session=True, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    pids = [int(pid) for pid in proc.stdout.readline().split()[1:]]
    ctx.cluster.strays.update(pids)
    t0 = time.perf_counter()
    os.killpg(proc.pid, signal.SIGKILL)
    elapsed = _wait_gone(pids, t0)
    proc.stdout.close()
    proc.wait()
    return elapsed
