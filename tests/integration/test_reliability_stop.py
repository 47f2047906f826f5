"""Stopping runs: cancel through the abort channel, per-stage timeouts, a worker's graceful drain."""

from __future__ import annotations

import os
import signal
import time

import pytest
from test_reliability_recovery import FAST, SCRIPT, gone, pids, spec

from celery_agent import submit_task
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration


def queue_name(tag: str) -> str:
    return f"{tag}-{os.getpid()}-{time.monotonic_ns()}"


def test_cancel_kills_the_run_tree_within_a_second(worker, make_repo, tmp_path, store):
    repo = make_repo({"job.py": SCRIPT})
    r = submit_task.delay(spec(repo, worker.queues, tmp_path, work=60, grace=0))
    wait_for("the run to start", lambda: pids(tmp_path), 30)
    run_pid, grandchild = pids(tmp_path)[0]
    t0 = time.monotonic()
    store.request_abort(r.id)
    wait_for(
        "the run and its child gone", lambda: gone(run_pid) and gone(grandchild), 5, every=0.005
    )
    took = time.monotonic() - t0
    out = r.get(timeout=30)
    assert out["status"] == "aborted", out
    assert took < 1.0, f"cancel -> tree gone took {took:.3f}s"
    print(f"cancel -> tree gone: {took * 1000:.0f} ms")


def test_a_stage_timeout_ends_the_run_timed_out_naming_the_stage(worker, make_repo, tmp_path):
    repo = make_repo({"job.py": SCRIPT})
    out = submit_task.delay(spec(repo, worker.queues, tmp_path, work=60, timeouts={"run": 1}))
    out = out.get(timeout=60)
    assert out["status"] == "timed_out" and out["error_stage"] == "run", out
    assert "run stage timed out" in out["error"]
    assert all(gone(p) for pair in pids(tmp_path) for p in pair)


def test_a_drained_run_goes_back_to_its_queue_and_finishes_elsewhere(
    make_worker, make_repo, tmp_path, store
):
    queue = queue_name("drain")
    first = make_worker(queue, concurrency=1, CELERY_AGENT_DRAIN_GRACE="1", **FAST)
    repo = make_repo({"job.py": SCRIPT})
    r = submit_task.delay(spec(repo, queue, tmp_path, work=5))
    wait_for("the run to start", lambda: pids(tmp_path), 30)
    assert first.proc is not None
    counts = store.r.hgetall(store.keys.run_counts())
    first.proc.send_signal(signal.SIGTERM)
    first.proc.wait(15)
    record = store.get(r.id)
    assert record["state"] == "queued" and "drained" in record["last_error"], record
    after = store.r.hgetall(store.keys.run_counts())  # (the exporter serves these counters)
    assert int(after["requeued"]) >= int(counts.get("requeued", 0)) + 1
    assert all(gone(p) for pair in pids(tmp_path) for p in pair)
    make_worker(queue, concurrency=1, **FAST)
    out = r.get(timeout=60)
    assert out["status"] == "succeeded", out
    record = store.get(r.id)
    assert record["attempt"] == 2 and not record.get("lost_attempts")


def test_a_second_sigterm_stops_the_runs_at_once(make_worker, make_repo, tmp_path, store):
    queue = queue_name("drain2")
    w = make_worker(queue, concurrency=1, CELERY_AGENT_DRAIN_GRACE="300", **FAST)
    repo = make_repo({"job.py": SCRIPT})
    r = submit_task.delay(spec(repo, queue, tmp_path, work=60))
    wait_for("the run to start", lambda: pids(tmp_path), 30)
    assert w.proc is not None
    w.proc.send_signal(signal.SIGTERM)
    wait_for("the worker to drain", lambda: "draining: runs get 300s to finish" in w.output(), 30)
    assert w.proc.poll() is None and store.get(r.id)["state"] == "running", "the grace holds"
    w.proc.send_signal(signal.SIGTERM)
    w.proc.wait(10)
    assert store.get(r.id)["state"] == "queued"
    store.request_abort(r.id)  # nobody serves the queue any more: end it


def test_revoke_terminate_kills_the_tree_and_ends_the_run_aborted(
    make_worker, make_beat, make_repo, tmp_path, store
):
    queue = queue_name("revoke")
    make_worker(queue, concurrency=1, **FAST)
    make_beat(**FAST)
    repo = make_repo({"job.py": SCRIPT})
    r = submit_task.delay(spec(repo, queue, tmp_path, work=60))
    wait_for("the run to start", lambda: pids(tmp_path), 30)
    run_pid, grandchild = pids(tmp_path)[0]
    r.revoke(terminate=True)
    wait_for("the run and its child gone", lambda: gone(run_pid) and gone(grandchild), 15)
    record = wait_for(
        "the run to stop running",
        lambda: (rec := store.get(r.id))["state"] != "running" and rec,
        20,
    )
    assert record["state"] == "aborted" and "revoked" in record["error"], record
    assert len(pids(tmp_path)) == 1, "a revoked run is not started again"
