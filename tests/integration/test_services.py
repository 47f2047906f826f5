"""Services mode: one thread-pool worker runs many controller-like runs at once, each supervised."""

from __future__ import annotations

import uuid

import psutil
import pytest

from celery_agent import RunHandle, TaskSpec, submit
from celery_agent.services import POOL_ARGS, services_argv
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration

SLEEPER = """\
import os, time
print("run", os.environ["CELERY_AGENT_RUN_ID"], "pid", os.getpid(), flush=True)
time.sleep(120)
"""


def _wait_all(runs: list[RunHandle], states: set[str], timeout: float) -> list[str]:
    def reached() -> list[str] | None:
        now = [r.state for r in runs]
        return now if all(s in states for s in now) else None

    return wait_for(
        f"every run {' or '.join(sorted(states))}",
        reached,
        timeout,
        every=0.2,
        detail=lambda: [r.state for r in runs],
    )


def _pid(run: RunHandle) -> int:
    line = next(line for line in run.logs() if line.startswith("run "))
    assert run.id in line  # each run writes to its own log
    return int(line.split()[-1])


def test_services_worker_runs_ten_runs_at_once_each_its_own_cancellable_process(
    make_worker, make_repo
):
    assert all(arg in services_argv() for arg in POOL_ARGS)
    queue = f"svc-{uuid.uuid4().hex[:6]}"
    make_worker(queue, concurrency=32, args=POOL_ARGS)
    repo = make_repo({"sleeper.py": SLEEPER})
    runs = [
        submit(TaskSpec(repo=str(repo), entry="sleeper.py", executor="local", queue=queue))
        for _ in range(10)
    ]
    assert _wait_all(runs, {"running"}, 30) == ["running"] * 10  # all ten overlap
    wait_for(
        "every run's first line",
        lambda: all(any(x.startswith("run ") for x in r.logs()) for r in runs),
        10,
        every=0.2,
    )
    pids = [_pid(r) for r in runs]
    assert len(set(pids)) == 10 and all(psutil.pid_exists(p) for p in pids)
    for r in runs:
        r.cancel()
    assert _wait_all(runs, {"aborted"}, 30) == ["aborted"] * 10
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)
