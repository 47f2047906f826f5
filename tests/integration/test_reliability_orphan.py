"""A worker's main process killed with SIGKILL while its pool process runs a job: the pool process
stops the run and exits, and the run is re-queued and finishes on another worker, same run id."""

from __future__ import annotations

import os
import signal
import textwrap
import time

import psutil
import pytest
from test_reliability_recovery import FAST, gone, pids, start_run

from celery_agent.state import ACTIVE
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration

#: the first attempt works for two minutes (with a grandchild); a later one ends at once
JOB = textwrap.dedent(
    """\
    import os, subprocess, sys, time
    folder = os.environ["PID_DIR"]
    first = not any(name.endswith(".pids") for name in os.listdir(folder))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(os.path.join(folder, f"{os.getpid()}.pids"), "w") as fh:
        fh.write(f"{os.getpid()} {child.pid}")
    print("started", "first" if first else "again", flush=True)
    time.sleep(120 if first else 0.5)
    child.kill()
    print("done", flush=True)
    """
)


def test_a_killed_worker_main_process_stops_its_runs_and_they_finish_elsewhere(
    make_worker, make_beat, make_repo, tmp_path, store
):
    make_beat(**FAST)
    first, queue, r, run_pid, grandchild = start_run(
        make_worker, make_repo, tmp_path, "orphan", JOB, work=0
    )
    pool_pid = int(store.get(r.id)["pid"])
    assert first.proc is not None and psutil.Process(pool_pid).ppid() == first.proc.pid
    os.kill(first.proc.pid, signal.SIGKILL)  # the main process only; its pool process lives on
    first.proc.wait()
    killed_at = time.monotonic()
    wait_for(
        "the run, its child and the pool process gone",
        lambda: gone(run_pid) and gone(grandchild) and gone(pool_pid),
        5,
    )
    stopped = time.monotonic() - killed_at
    assert f"worker process {first.proc.pid} is gone" in first.output()
    assert store.get(r.id)["state"] in ACTIVE, "the pool process recorded no outcome"
    make_worker(queue, concurrency=1, **FAST)
    out = r.get(timeout=60)
    recovered = time.monotonic() - killed_at
    assert out["status"] == "succeeded", out
    record = store.get(r.id)
    assert record["attempt"] == 2 and record["lost_attempts"] == 1
    assert first.name in record["last_error"]
    assert len(pids(tmp_path)) == 2, "one start per attempt"
    print(f"main process killed -> run stopped in {stopped:.1f}s, finished in {recovered:.1f}s")
