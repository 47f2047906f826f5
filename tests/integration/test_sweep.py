"""The cluster sweep: lost workers and their runs, idempotent, locked, and scheduled by celery beat."""

from __future__ import annotations

import time
import uuid

import pytest

from celery_agent import state
from celery_agent.state import RunStore
from celery_agent.sweep import sweep
from celery_agent.testing import wait_for
from celery_agent.workers import LOST, STOPPED, WorkerRegistry

pytestmark = pytest.mark.integration


@pytest.fixture()
def own(redis_url):
    """A store and registry under a key prefix of this test's own: the sweeps that the test
    workers' main processes and other tests' beats run (on the default prefix) never touch it."""
    store = RunStore.from_url(redis_url, prefix=f"sweep-{uuid.uuid4().hex[:8]}")
    yield store, WorkerRegistry(store.r, store.keys)
    left = list(store.r.scan_iter(f"{store.prefix}:*"))
    if left:
        store.r.delete(*left)


def sweep_now(store, registry, **kw):
    """Sweep at once (the lock of the last sweep of this test cleared)."""
    store.r.delete(store.keys.sweep_lock())
    return sweep(store, registry, **kw)


def dead_worker_with_a_run(store, registry, ttl: float = 0.2) -> tuple[str, str]:
    """A worker that beat once (record expiring after ``ttl``) while running a run it no longer claims."""
    name, run_id = f"dead-{uuid.uuid4().hex[:6]}@h", uuid.uuid4().hex
    store.create_run(run_id, {"entry": "x.py"}, "q")
    store.transition(run_id, state.RUNNING, worker=name)
    registry.add_run(name, run_id)
    registry.beat(name, {"name": name, "at": time.time(), "snapshot": {}}, ttl=ttl)
    return name, run_id


def test_sweep_marks_an_expired_worker_and_its_run_lost_once(own):
    store, registry = own
    name, run_id = dead_worker_with_a_run(store, registry)
    # its heartbeat expired
    wait_for("the heartbeat to expire", lambda: not registry.is_alive(name), 30)
    first = sweep_now(store, registry, lock_ttl=0.05)
    assert name in first["lost_workers"] and run_id in first["lost_runs"]
    record = store.get(run_id)
    assert record["state"] == state.LOST and name in record["error"]
    again = sweep_now(store, registry, lock_ttl=0.05)
    assert name not in again["lost_workers"] and run_id not in again["lost_runs"]
    row = next(r for r in registry.overview() if r["name"] == name)
    assert row["state"] == LOST and registry.current_runs(name) == []


def test_a_second_sweep_within_the_lock_does_nothing(own):
    store, registry = own
    assert "skipped" not in sweep_now(store, registry, lock_ttl=5)
    assert sweep(store, registry, lock_ttl=5) == {"skipped": True}


def test_a_live_claim_or_a_clean_stop_is_not_lost(own):
    store, registry = own
    name, run_id = dead_worker_with_a_run(store, registry, ttl=30)
    store.claim(run_id, name, 30)
    stopped = f"stopped-{uuid.uuid4().hex[:6]}@h"
    registry.beat(stopped, {"name": stopped, "snapshot": {}}, ttl=30)
    registry.stopped(stopped, "h")
    result = sweep_now(store, registry, lock_ttl=0.01)
    assert run_id not in result["lost_runs"] and stopped not in result["lost_workers"]
    assert store.get(run_id)["state"] == state.RUNNING
    assert next(r for r in registry.overview() if r["name"] == stopped)["state"] == STOPPED


def test_beat_schedules_the_sweep_that_a_worker_runs(own, make_worker, make_beat):
    store, registry = own
    # the worker sweeps this prefix by itself once at start, then only when beat asks (its own
    # sweeps are an hour apart); beat's sweep goes to a queue of this test's own
    env = {"CELERY_AGENT_PREFIX": store.prefix, "CELERY_AGENT_SWEEP_QUEUE": f"{store.prefix}-q"}
    make_worker(f"{store.prefix}-runs", concurrency=1, CELERY_AGENT_SWEEP_INTERVAL="3600", **env)
    wait_for("the worker's first sweep", lambda: store.r.exists(store.keys.sweep_lock()), 30)
    # that sweep's lock lasts the hour-long interval, which would skip beat's sweeps too
    store.r.delete(store.keys.sweep_lock())
    name, run_id = dead_worker_with_a_run(store, registry)
    wait_for("the heartbeat to expire", lambda: not registry.is_alive(name), 30)
    assert store.get(run_id)["state"] == state.RUNNING  # nothing swept it yet
    beat = make_beat(CELERY_AGENT_SWEEP_INTERVAL="1", **env)
    wait_for(
        "beat's sweep to mark the run lost",
        lambda: store.get(run_id)["state"] == state.LOST,
        30,
        detail=lambda: beat.log.read_text()[-2000:],
    )
    assert next(r for r in registry.overview() if r["name"] == name)["state"] == LOST


def test_a_run_sent_back_to_its_queue_goes_ahead_of_runs_that_never_started(
    store, make_worker, make_repo, tmp_path
):
    """A requeued run (its worker died or drained) is taken before the backlog queued after it."""
    from celery_agent import submit_task
    from celery_agent.app import app
    from celery_agent.requeue import celery_resend

    queue = f"order-{uuid.uuid4().hex[:8]}"
    starts = tmp_path / "starts.txt"
    repo = make_repo(
        {
            "job.py": f"import os\nopen({str(starts)!r}, 'a').write(os.environ['CELERY_AGENT_RUN_ID'] + '\\n')\n"
        }
    )
    spec = {"repo": str(repo), "entry": "job.py", "queue": queue, "executor": "local"}
    backlog = [submit_task.delay(spec).id for _ in range(3)]
    again = str(uuid.uuid4())
    store.create_run(again, spec, queue)
    celery_resend(app)(again, spec, queue)  # sent last, as the sweep sends a requeued run
    make_worker(queue, concurrency=1)
    for run_id in [again, *backlog]:
        assert app.AsyncResult(run_id).get(timeout=60)["status"] == "succeeded"
    assert starts.read_text().split() == [again, *backlog]


def test_a_run_the_sweep_ends_gets_its_outcome_as_the_celery_result(own):
    """A caller waiting on r.get() learns that its run was lost, with no runner left to say so."""
    from celery_agent.app import app
    from celery_agent.requeue import celery_finished

    store, registry = own
    name, run_id = dead_worker_with_a_run(store, registry)
    wait_for("the heartbeat to expire", lambda: not registry.is_alive(name), 30)
    sweep_now(store, registry, lock_ttl=0.05, finished=celery_finished(app, store))
    out = app.AsyncResult(run_id).get(timeout=10)
    assert out["status"] == state.LOST and out["run_id"] == run_id and name in out["error"]


def test_a_dead_workers_messages_of_queued_unclaimed_runs_are_handed_back_once(store):
    """Of the run messages a dead worker held: a queued, unclaimed run's goes back; a claimed
    one's waits for its claim; a started run's is dropped from the list (its claim tells)."""
    from celery_agent.reserved import Reservations
    from celery_agent.state import RunStore
    from celery_agent.workers import WorkerRegistry

    own = RunStore(store.r, prefix=f"res{uuid.uuid4().hex[:8]}")  # no background sweep here
    registry = WorkerRegistry(own.r, own.keys)
    name, started = dead_worker_with_a_run(own, ttl=0.2, registry=registry)
    waiting, claimed = uuid.uuid4().hex, uuid.uuid4().hex
    for run_id in (waiting, claimed):
        own.create_run(run_id, {"entry": "x.py"}, "q")
    own.claim(started, name, 30)
    own.claim(claimed, "other|h|1", 30)
    Reservations(own.r, own.keys).replace(name, {waiting: "w", claimed: "c", started: "s"})
    wait_for("the heartbeat to expire", lambda: not registry.is_alive(name), 30)
    restored: list[str] = []
    result = sweep_now(own, registry, lock_ttl=0.05, restore=restored.append)
    assert restored == ["w"] and result["restored_runs"] == [waiting]
    assert own.r.hkeys(own.keys.worker_reserved(name)) == [claimed]
    own.r.delete(own.keys.claim(claimed))
    assert sweep_now(own, registry, lock_ttl=0.05, restore=restored.append)["restored_runs"] == [
        claimed
    ]
    assert restored == ["w", "c"] and not own.r.exists(own.keys.worker_reserved(name))


def test_the_one_sweep_runner_ends_a_cancelled_run_aborted_and_logs_it(own, caplog):
    """Beat's task and the workers' chore both run sweep.sweeper: a cancelled run of a dead worker
    ends aborted, is logged, and its waiting caller gets the outcome."""
    from celery_agent.app import app
    from celery_agent.settings import Settings
    from celery_agent.sweep import sweeper

    store, registry = own
    name, run_id = dead_worker_with_a_run(store, registry)
    assert store.request_abort(run_id) == state.RUNNING
    wait_for("the heartbeat to expire", lambda: not registry.is_alive(name), 30)
    settings = Settings(sweep_interval=0.1, run_retention_days=0)
    with caplog.at_level("WARNING", logger="celery_agent.sweep"):
        result = sweeper(app, settings, store, registry)()
    assert result["aborted_runs"] == [run_id] and store.get(run_id)["state"] == state.ABORTED
    assert any(
        "aborted_runs" in r.getMessage() and run_id in r.getMessage() for r in caplog.records
    )
    assert app.AsyncResult(run_id).get(timeout=10)["status"] == state.ABORTED
