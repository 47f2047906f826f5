"""Dispatch: submit -> first line of the user script, with the env cache warm.

Measured from the run record (``timings.first_line``: the worker read the line, minus
``submitted_at``) and, for what a reader of the log sees, from the stream id of the first user
line in Redis. Baseline: the sum of the parts done by hand, each its median over the same N: a
bare Celery no-op round trip on the same broker, ``git worktree add`` of the same commit, ``git
apply`` of the same diff, and a spawn of the env's python printing one line.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from celery_agent.jobstate import TAG

from . import baseline_app
from .context import AGENT_QUEUE, BASELINE_QUEUE, Context
from .report import Row, median, p90
from .workload import git

SLACK = 0.040  #: p50 may exceed the sum of its parts by this much
SPREAD = 1.5  #: p90 may be this many times p50


def run(ctx: Context) -> list[Row]:
    """Measure dispatch latency and the sum of its parts."""
    n = ctx.n(100, 5)
    record, visible = _dispatch_samples(ctx, n)
    parts = _parts(ctx, n)
    total = sum(parts.values())
    p50 = median(record)
    rows = [
        Row("dispatch p50 (run record)", p50, total, "ms", "diff", "<= +40 ms", p50 - total <= SLACK),
        Row("dispatch p90 (run record)", p90(record), p50, "ms", "ratio", "<= 1.5x p50",
            p90(record) <= SPREAD * p50),
        Row("dispatch p50 (seen in Redis)", median(visible), total, "ms", "diff", "-", None),
    ]  # fmt: skip
    rows += [
        Row(f"  part: {name}", value, None, "ms", "none", "-", None)
        for name, value in parts.items()
    ]
    return rows


def _dispatch_samples(ctx: Context, n: int) -> tuple[list[float], list[float]]:
    spec = ctx.workload.spec("first.py", AGENT_QUEUE)
    ctx.env()
    for _ in range(ctx.n(4, 2)):  # both pool children: clone cache, interpreter probe, imports
        ctx.submit_and_wait(spec)
    record, visible = [], []
    for _ in range(n):
        summary = ctx.submit_and_wait(spec)
        submitted = float(ctx.store.get(summary["run_id"])["submitted_at"])
        record.append(float(summary["timings"]["first_line"]))
        visible.append(_first_user_entry(ctx, summary["run_id"]) - submitted)
    return record, visible


def _first_user_entry(ctx: Context, run_id: str) -> float:
    """Wall-clock time Redis stamped on the first stream entry holding a line of the user's."""
    for entry_id, data in ctx.store.r.xrange(ctx.store.keys.log(run_id)):
        if any(not line.startswith(TAG) for line in data["l"].split("\n")):
            return int(entry_id.split("-")[0]) / 1000
    raise RuntimeError(f"run {run_id} has no user line in its log stream")


# -- the parts, by hand ---------------------------------------------------------------------------
def _parts(ctx: Context, n: int) -> dict[str, float]:
    ctx.baseline()
    noop = _timed(n, _noop_round_trip)
    with tempfile.TemporaryDirectory(dir=ctx.root) as scratch:
        add, apply = _git_parts(ctx, Path(scratch), n)
    spawn = _timed(n, lambda: _spawn_first_line(ctx.env().python))
    return {
        "celery no-op round trip": noop,
        "git worktree add": add,
        "git apply": apply,
        "env python prints a line": spawn,
    }


def _timed(n: int, step: Callable[[], float | None], warmup: int = 3) -> float:
    """Median of ``n`` timings of ``step`` (it returns its own time, or None to be timed whole)."""
    samples = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        own = step()
        if i >= warmup:
            samples.append(own if own is not None else time.perf_counter() - t0)
    return median(samples)


def _noop_round_trip() -> None:
    baseline_app.noop.apply_async(queue=BASELINE_QUEUE).get(timeout=30)


def _git_parts(ctx: Context, scratch: Path, n: int) -> tuple[float, float]:
    """Medians of `git worktree add` and `git apply`, on a bare clone like the agent's cache."""
    bare, patch = scratch / "clone.git", scratch / "run.diff"
    git(scratch, "clone", "--bare", "--quiet", str(ctx.workload.repo), str(bare))
    patch.write_text(ctx.workload.diff)
    adds, applies = [], []
    for i in range(n + 3):
        dest = scratch / f"wt{i}"
        t0 = time.perf_counter()
        _git(
            bare,
            "worktree",
            "add",
            "--force",
            "--detach",
            "--quiet",
            str(dest),
            ctx.workload.commit,
        )
        t1 = time.perf_counter()
        _git(dest, "apply", "--whitespace=nowarn", str(patch))
        t2 = time.perf_counter()
        _git(bare, "worktree", "remove", "--force", "--force", str(dest))
        if i >= 3:
            adds.append(t1 - t0)
            applies.append(t2 - t1)
    return median(adds), median(applies)


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def _spawn_first_line(python: str) -> float:
    """Seconds from spawning ``python`` to reading the line it prints."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [python, "-c", "print('first line')"], stdout=subprocess.PIPE, env=env,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    proc.stdout.readline()
    elapsed = time.perf_counter() - t0
    proc.stdout.close()
    proc.wait()
    return elapsed
