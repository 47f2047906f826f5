"""Worker loss on default settings: a dead worker's run is back within seconds, a paused one's
run is never started twice (heartbeat TTL < claim TTL - renewal period, see the README)."""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid

import psutil
import pytest
from test_reliability_recovery import SCRIPT, gone, pids, spec

from celery_agent import submit_task
from celery_agent.keeper import RENEWALS
from celery_agent.settings import Settings
from celery_agent.testing import wait_for
from celery_agent.workers import LOST

pytestmark = pytest.mark.integration

DEFAULTS = Settings()
#: the run goes back within this many seconds of its worker's death (the issue's goal)
RECOVERY_GOAL = 20.0


def two_workers(make_worker, tag: str):
    """Two workers with the default timings on a queue of their own."""
    queue = f"{tag}-{uuid.uuid4().hex[:8]}"
    return queue, [make_worker(queue, concurrency=1) for _ in range(2)]


def holder(workers, store, run_id: str):
    """The worker whose pool runs ``run_id`` now, and the other one."""
    name = store.get(run_id)["worker"]
    first = next(w for w in workers if name == f"{w.name}@{socket.gethostname()}")
    return first, next(w for w in workers if w is not first)


def test_a_killed_worker_run_is_back_within_seconds_on_default_settings(
    make_worker, make_repo, tmp_path, store
):
    queue, workers = two_workers(make_worker, "dflt-kill")
    r = submit_task.delay(spec(make_repo({"job.py": SCRIPT}), queue, tmp_path, work=60))
    wait_for("the run to start", lambda: pids(tmp_path), 30)
    victim, _ = holder(workers, store, r.id)
    os.killpg(victim.proc.pid, signal.SIGKILL)  # the whole worker: a dead machine
    killed_at = time.monotonic()
    victim.proc.wait()
    wait_for("attempt 2 to start", lambda: len(pids(tmp_path)) == 2, RECOVERY_GOAL + 5)
    back = time.monotonic() - killed_at
    record = store.get(r.id)
    assert record["attempt"] == 2 and record["lost_attempts"] == 1, record
    assert victim.name in record["last_error"]
    assert back < RECOVERY_GOAL, f"the run was back {back:.1f}s after its worker died"
    store.request_abort(r.id)
    assert r.get(timeout=30)["status"] == "aborted"


def test_a_paused_worker_past_its_heartbeat_ttl_keeps_its_run(
    make_worker, make_repo, tmp_path, store
):
    """SIGSTOP the whole worker (its pool and the run) past the heartbeat TTL: the sweep marks
    the worker lost, but its run's claim outlives the pause, so the run is never sent again."""
    heartbeat_ttl = 3 * DEFAULTS.heartbeat_interval
    pause = heartbeat_ttl + DEFAULTS.sweep_interval
    assert pause < DEFAULTS.claim_ttl * (1 - 1 / RENEWALS), "the claim must outlive the pause"
    queue, workers = two_workers(make_worker, "dflt-pause")
    r = submit_task.delay(spec(make_repo({"job.py": SCRIPT}), queue, tmp_path, work=pause + 4))
    wait_for("the run to start", lambda: pids(tmp_path), 30)
    paused, _ = holder(workers, store, r.id)
    name = store.get(r.id)["worker"]
    from celery_agent.app import get_registry

    os.killpg(paused.proc.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        row = lambda: next(w for w in get_registry().overview() if w["name"] == name)  # noqa: E731
        # the other worker's sweep saw it
        wait_for("the worker marked lost", lambda: row()["state"] == LOST, pause)
        time.sleep(max(0.0, pause - (time.monotonic() - stopped_at)))  # the pause itself
    finally:
        os.killpg(paused.proc.pid, signal.SIGCONT)
    wait_for("the worker online again", lambda: row()["state"] == "online", 10)  # beating again
    out = r.get(timeout=60)
    assert out["status"] == "succeeded", out
    record = store.get(r.id)
    assert record["attempt"] == 1 and int(record.get("lost_attempts") or 0) == 0, record
    assert len(pids(tmp_path)) == 1, "the run started once"


def test_a_message_whose_worker_died_before_claiming_it_goes_to_another_worker(
    make_worker, make_repo, tmp_path, store
):
    """The worker takes the run's message (its pool processes stopped, so nobody claims it) and
    dies: the sweep hands the message back once the heartbeat expired, not after the broker's
    visibility timeout (6 h)."""
    queue = f"dflt-held-{uuid.uuid4().hex[:8]}"
    taker = make_worker(queue, concurrency=1)
    pool = psutil.Process(taker.proc.pid).children()
    for proc in pool:
        proc.suspend()
    r = submit_task.delay(spec(make_repo({"job.py": SCRIPT}), queue, tmp_path, work=0.5))
    name = f"{taker.name}@{socket.gethostname()}"
    reserved = store.keys.worker_reserved(name)
    # the main process took the message
    wait_for("the message reserved", lambda: store.r.hget(reserved, r.id), 15)
    os.killpg(taker.proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    taker.proc.wait()
    assert store.get(r.id)["state"] == "queued" and not store.r.exists(store.keys.claim(r.id))
    make_worker(queue, concurrency=1)
    out = r.get(timeout=RECOVERY_GOAL + 10)
    back = time.monotonic() - killed_at
    assert out["status"] == "succeeded", out
    assert store.get(r.id)["attempt"] == 1 and len(pids(tmp_path)) == 1
    assert not store.r.exists(reserved), "the dead worker's list was handed back and dropped"
    assert back < RECOVERY_GOAL, f"the run ended {back:.1f}s after its worker died"


def test_a_worker_paused_past_its_claim_stops_its_attempt_once_it_resumes(
    make_worker, make_repo, tmp_path, store
):
    """Paused longer than the claim lives: the run goes to the other worker; when the paused one
    resumes, its runner finds the claim taken, kills its attempt and writes nothing more."""
    queue, workers = two_workers(make_worker, "dflt-stall")
    r = submit_task.delay(spec(make_repo({"job.py": SCRIPT}), queue, tmp_path, work=60, grace=0))
    wait_for("the run to start", lambda: pids(tmp_path), 30)
    ((old_run, old_child),) = pids(tmp_path)
    paused, other = holder(workers, store, r.id)
    os.killpg(paused.proc.pid, signal.SIGSTOP)
    try:
        # attempt 2, elsewhere
        wait_for("attempt 2 to start", lambda: len(pids(tmp_path)) == 2, RECOVERY_GOAL + 5)
    finally:
        os.killpg(paused.proc.pid, signal.SIGCONT)
    wait_for("the old attempt gone", lambda: gone(old_run) and gone(old_child), 10)
    record = store.get(r.id)
    assert record["attempt"] == 2 and record["worker"] == f"{other.name}@{socket.gethostname()}"
    assert record["state"] == "running", record
    assert "runs it now; stopping this attempt" in wait_for(
        "the paused worker to stop its attempt",
        lambda: "runs it now" in paused.output() and paused.output(),
        10,
    )
    store.request_abort(r.id)
    assert r.get(timeout=30)["status"] == "aborted"
