"""Never lose or duplicate a run: redeliveries, killed workers, killed pool processes."""

from __future__ import annotations

import os
import signal
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from proc_support import gone

from celery_agent import TaskSpec, submit_task
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration

#: a run that starts a grandchild, notes both pids, then works for $WORK seconds
SCRIPT = textwrap.dedent(
    """\
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(os.path.join(os.environ["PID_DIR"], f"{os.getpid()}.pids"), "w") as fh:
        fh.write(f"{os.getpid()} {child.pid}")
    print("started", flush=True)
    time.sleep(float(os.environ["WORK"]))
    child.kill()
    print("done", flush=True)
    """
)
FAST = {  # heartbeats, claims and sweeps in seconds, not minutes
    "CELERY_AGENT_HEARTBEAT_INTERVAL": "1",
    "CELERY_AGENT_CLAIM_TTL": "2",
    "CELERY_AGENT_SWEEP_INTERVAL": "1",
    # their own sweep queue: the session's worker (30 s sweeps, long lock) must not get these
    "CELERY_AGENT_SWEEP_QUEUE": f"sweep-fast-{uuid.uuid4().hex[:8]}",
}


def spec(repo: Path, queue: str, pid_dir: Path, work: float, **kw: object) -> TaskSpec:
    env = {"PID_DIR": str(pid_dir), "WORK": str(work)}
    fields = {"repo": str(repo), "entry": "job.py", "queue": queue, "executor": "local", "env": env}
    return TaskSpec.parse(fields | kw)


def pids(pid_dir: Path) -> list[tuple[int, int]]:
    """(run process, grandchild) of every attempt that started, in no order."""
    out = []
    for f in pid_dir.glob("*.pids"):
        text = f.read_text().split()
        if len(text) == 2:
            out.append((int(text[0]), int(text[1])))
    return out


def start_run(make_worker, make_repo, tmp_path: Path, tag: str, script: str, work: float,
              concurrency: int = 1, **kw: object):  # fmt: skip
    """A worker on a queue of its own, and a run of ``script`` on it once its process and that
    process's child are up: (worker, queue, result, run pid, grandchild pid)."""
    queue = f"{tag}-{os.getpid()}-{time.monotonic_ns()}"
    worker = make_worker(queue, concurrency=concurrency, **FAST)
    repo = make_repo({"job.py": script})
    r = submit_task.delay(spec(repo, queue, tmp_path, work=work, **kw))
    wait_for("the run to start", lambda: pids(tmp_path), 30)
    run_pid, grandchild = pids(tmp_path)[0]
    return worker, queue, r, run_pid, grandchild


def test_a_run_longer_than_the_visibility_timeout_runs_once(
    make_worker, make_repo, tmp_path, store
):
    config = tmp_path / "cfg"
    config.mkdir()
    (config / "short_visibility.py").write_text(
        "broker_transport_options = {'queue_order_strategy': 'priority', 'visibility_timeout': 2,"
        " 'unacked_restore_interval': 1, 'unacked_restore_throttle': 1}\n"
    )
    queue = f"vt-{os.getpid()}-{time.monotonic_ns()}"
    w = make_worker(queue, CELERY_AGENT_CONFIG="short_visibility", PYTHONPATH=str(config))
    repo = make_repo({"job.py": SCRIPT})
    r = submit_task.delay(spec(repo, queue, tmp_path, work=7))
    out = r.get(timeout=60)
    assert out["status"] == "succeeded", out
    assert len(pids(tmp_path)) == 1, "the run started once"
    assert store.get(r.id)["attempt"] == 1
    assert "dropping a second delivery" in wait_for(
        "the second delivery dropped",
        lambda: "dropping a second delivery" in w.output() and w.output(),
        10,
    )


def test_a_killed_worker_run_is_requeued_and_finishes_elsewhere(
    make_worker, make_beat, make_repo, tmp_path, store
):
    make_beat(**FAST)
    first, queue, r, run_pid, grandchild = start_run(
        make_worker, make_repo, tmp_path, "kill", SCRIPT, work=4
    )
    assert first.proc is not None
    os.killpg(first.proc.pid, signal.SIGKILL)  # the whole worker, pool included: a dead machine
    first.proc.wait()
    killed_at = time.monotonic()
    # the run's process group (its child too) dies with its pool process: the guard kills it
    wait_for("the run and its child gone", lambda: gone(run_pid) and gone(grandchild), 5)
    make_worker(queue, concurrency=1, **FAST)
    record = wait_for("attempt 2", lambda: (rec := store.get(r.id)).get("attempt") == 2 and rec, 30)
    recovered = time.monotonic() - killed_at
    out = r.get(timeout=60)
    assert out["status"] == "succeeded", out
    record = store.get(r.id)
    assert record["attempt"] == 2 and record["lost_attempts"] == 1
    assert first.name in record["last_error"]
    assert len(pids(tmp_path)) == 2
    print(f"worker killed -> run started again in {recovered:.1f}s")


def test_a_killed_pool_process_is_taken_over_and_its_processes_die(
    make_worker, make_repo, tmp_path, store
):
    _, _, r, run_pid, grandchild = start_run(
        make_worker, make_repo, tmp_path, "pool", SCRIPT, work=3, concurrency=2
    )
    os.kill(int(store.get(r.id)["pid"]), signal.SIGKILL)
    wait_for("the run and its child gone", lambda: gone(run_pid) and gone(grandchild), 10)
    out = r.get(timeout=60)
    assert out["status"] == "succeeded", out
    record = store.get(r.id)
    assert record["attempt"] == 2 and record["lost_attempts"] == 1


def test_a_run_out_of_attempts_ends_lost(make_worker, make_repo, tmp_path, store):
    queue = f"once-{os.getpid()}-{time.monotonic_ns()}"
    make_worker(queue, concurrency=2, **FAST)
    repo = make_repo({"job.py": SCRIPT})
    r = submit_task.delay(spec(repo, queue, tmp_path, work=30, max_attempts=1))
    wait_for("the run to start", lambda: pids(tmp_path), 30)
    os.kill(int(store.get(r.id)["pid"]), signal.SIGKILL)
    out = r.get(timeout=30)
    assert out["status"] == "lost" and "max_attempts is 1" in out["error"], out
    assert store.get(r.id)["state"] == "lost"
    assert all(gone(p) for pair in pids(tmp_path) for p in pair)


def test_a_worker_restarted_under_its_name_hands_back_what_its_dead_process_held(
    redis_url, tmp_path, store
):
    """Its first beat rewrites the list of messages it holds: what the dead process took and
    never claimed must go back to the queue first, not wait out the visibility timeout."""
    import socket

    from conftest import Worker

    w = Worker(tmp_path / "home", redis_url, f"back-{uuid.uuid4().hex[:6]}")
    run_id = uuid.uuid4().hex
    assert store.create_run(run_id, {"repo": "/r", "entry": "t.py"}, w.queues)
    held = store.keys.worker_reserved(f"{w.name}@{socket.gethostname()}")
    store.r.hset(held, run_id, "tag-of-the-dead-process")
    w.start()
    try:
        wait_for(
            "the restarted worker to hand the message back",
            lambda: f"run {run_id}: worker {w.name}" in w.output(),
            30,
            detail=lambda: w.output()[-3000:],
        )
        assert "died holding its message; sent on" in w.output()
    finally:
        w.stop()
        store.request_abort(run_id)
