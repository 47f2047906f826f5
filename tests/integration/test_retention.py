"""Retention on a real Redis: runs that ended long ago disappear with every key, in bounded batches;
young, queued and running runs, and trials of a running search, stay; old run folders go too."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from celery_agent import metrics, retention, state
from celery_agent.cli import EXIT_ERROR, main
from celery_agent.state import RunStore
from celery_agent.sweep import sweep
from celery_agent.workers import WorkerRegistry

pytestmark = pytest.mark.integration

DAY = retention.DAY


@pytest.fixture()
def own(store) -> RunStore:
    """A store under a prefix of its own on the test Redis, so counts are exact."""
    return RunStore(store.r, prefix=f"ret{uuid.uuid4().hex[:8]}")


def add_run(store: RunStore, run_state: str, days_ago: float, name: str = "") -> str:
    """A run submitted and (if terminal) ended ``days_ago``, with every key a run can have."""
    run_id, at = uuid.uuid4().hex, time.time() - days_ago * DAY
    store.create_run(run_id, {"entry": "x.py", "name": name}, "q")
    store.r.zadd(store.keys.runs(), {run_id: at})
    store.transition(run_id, run_state, force=True, submitted_at=at, **{f"{run_state}_at": at})
    store.append_log(run_id, ["a line", "another"])
    metrics.append(store, run_id, [metrics.Metric("loss", 0.5, 1)])
    store.claim(run_id, "w|h|1", ttl=600)
    store.r.set(store.keys.abort(run_id), "1", ex=600)
    store.r.set(store.keys.secrets(run_id), "{}", ex=600)
    return run_id


def keys_of(store: RunStore, run_id: str) -> list[str]:
    """Every key under the store's prefix that belongs to the run, and its index entry."""
    found = [k for k in store.r.scan_iter(f"{store.prefix}:*", count=1000) if run_id in k]
    if store.r.zscore(store.keys.runs(), run_id) is not None:
        found.append(f"{store.keys.runs()}[{run_id}]")
    return found


def test_runs_that_ended_before_the_retention_disappear_with_every_key(own):
    old = [add_run(own, s, 40) for s in sorted(state.TERMINAL)]
    # record, log, metrics, claim, abort flag, secrets and the index entry
    assert all(len(keys_of(own, r)) == 7 for r in old)
    young = add_run(own, state.SUCCEEDED, 2)
    active = [add_run(own, s, 90) for s in (state.QUEUED, state.PREPARING, state.RUNNING)]
    gone = retention.expire_runs(own, days=30)
    assert sorted(gone) == sorted(old)
    assert all(keys_of(own, r) == [] for r in old)
    for kept in (young, *active):
        assert len(keys_of(own, kept)) == 7 and own.get(kept)["state"]
    assert retention.expire_runs(own, days=30) == []


def test_a_sweep_works_off_a_backlog_in_bounded_batches(own):
    stuck = [add_run(own, state.RUNNING, 60 + i) for i in range(3)]  # the oldest entries
    old = [add_run(own, state.FAILED, 40 + i / 100) for i in range(12)]
    registry = WorkerRegistry(own.r, own.keys)
    rounds = []
    for _ in range(6):
        own.r.delete(own.keys.sweep_lock())  # (the last sweep's lock: this one sweeps at once)
        result = sweep(own, registry, lock_ttl=0.001, retention_days=30, retention_batch=5,
                       retention_every=0)  # fmt: skip
        rounds.append(result["expired_runs"])
    assert max(rounds) <= 5 and sum(rounds) == 12, rounds
    assert rounds[0] == 2  # the first window held the three running runs and two failed ones
    assert all(keys_of(own, r) == [] for r in old) and all(keys_of(own, r) for r in stuck)


def test_trials_of_a_running_search_stay_until_it_ends(own):
    keys, sid = own.keys, uuid.uuid4().hex[:12]
    start = time.time() - 50 * DAY
    own.r.hset(keys.search(sid), mapping={"state": "running", "started_at": repr(start)})
    own.r.zadd(keys.searches(), {sid: start})
    own.r.hset(keys.search_trials(sid), "0", "{}")
    trial = add_run(own, state.SUCCEEDED, 45, name=f"search-{sid}-t0")
    other = add_run(own, state.SUCCEEDED, 45, name="search-elsewhere-t0")
    assert retention.expire_runs(own, days=30) == [other]
    assert retention.expire_searches(own, days=30) == []
    own.r.hset(keys.search(sid), mapping={"state": "finished", "finished_at": repr(start)})
    assert retention.expire_runs(own, days=30) == [trial]
    assert retention.expire_searches(own, days=30) == [sid]
    assert [k for k in own.r.scan_iter(f"{own.prefix}:*") if sid in k] == []
    assert own.r.zscore(keys.searches(), sid) is None


def test_a_retention_of_zero_keeps_everything(own):
    run_id = add_run(own, state.SUCCEEDED, 4000)
    registry = WorkerRegistry(own.r, own.keys)
    result = sweep(own, registry, lock_ttl=0.001, retention_days=0, retention_every=0)
    assert result["expired_runs"] == 0
    assert len(keys_of(own, run_id)) == 7


def test_show_and_ls_of_a_deleted_run_say_it_is_unknown(store, capsys):
    run_id = add_run(store, state.SUCCEEDED, 400)
    assert main(["show", run_id]) == 0
    assert run_id in retention.expire_runs(store, days=30)
    capsys.readouterr()
    assert main(["show", run_id]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: no run") and run_id in err and "celery-agent ls" in err, err
    assert main(["ls", "-n", "500"]) == 0
    assert run_id not in capsys.readouterr().out


def run_dir(root: Path, run_id: str, days_ago: float) -> Path:
    """A run folder (log file and output) last written ``days_ago``."""
    folder = root / run_id
    (folder / "output").mkdir(parents=True)
    (folder / "log.txt").write_text("a line\n")
    (folder / "output" / "model.bin").write_bytes(b"\0" * 64)
    at = time.time() - days_ago * DAY
    for path in (folder / "output" / "model.bin", folder / "output", folder / "log.txt", folder):
        os.utime(path, (at, at))
    return folder


def test_a_worker_prunes_old_run_folders_but_not_active_runs(own, tmp_path):
    finished, running = add_run(own, state.SUCCEEDED, 40), add_run(own, state.RUNNING, 40)
    forgotten = uuid.uuid4().hex  # its record already expired
    young = add_run(own, state.SUCCEEDED, 1)
    folders = {r: run_dir(tmp_path, r, 40) for r in (finished, running, forgotten)}
    folders[young] = run_dir(tmp_path, young, 1)
    removed = retention.prune_run_dirs(tmp_path, own, days=30)
    assert sorted(removed) == sorted([finished, forgotten])
    assert [r for r, f in folders.items() if f.exists()] == [running, young]


def test_pruning_removes_nothing_when_redis_cannot_say_what_is_active(tmp_path):
    folder = run_dir(tmp_path, uuid.uuid4().hex, 400)
    unreachable = RunStore.from_url("redis://127.0.0.1:1/0")
    with pytest.raises(Exception, match="Connection refused|connecting"):
        retention.prune_run_dirs(tmp_path, unreachable, days=30)
    assert folder.exists()
