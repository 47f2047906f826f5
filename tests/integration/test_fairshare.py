"""Fair order and quotas with a real worker (concurrency 4): a second user's runs go before the
first user's backlog is through; a user at quota never holds more than the quota, and the slots
the quota leaves free serve the others; a parked run is listed as waiting and can be cancelled."""

from __future__ import annotations

import json
import uuid

import pytest

from celery_agent import submit_task
from celery_agent.cli import main
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration

JOB = "import time, sys\ntime.sleep(float(sys.argv[1]))\n"


def _spec(repo, queue: str, user: str, work: float) -> dict:
    return {"repo": str(repo), "entry": "job.py", "executor": "local", "queue": queue,
            "user": user, "args": [str(work)]}  # fmt: skip


def _send(spec: dict, n: int) -> list[str]:
    return [submit_task.apply_async([spec], ignore_result=True).id for _ in range(n)]


def _ended(store, ids: list[str], timeout: float) -> dict[str, dict]:
    def ended() -> dict[str, dict] | None:
        records = {i: store.get(i) for i in ids}
        done = all(r.get("state") in ("succeeded", "failed", "aborted") for r in records.values())
        return records if done else None

    return wait_for(
        "every run to end",
        ended,
        timeout,
        every=0.2,
        detail=lambda: [store.get(i).get("state") for i in ids],
    )


def _parked(store, ids: list[str], reason: str) -> list[str]:
    """The runs of ``ids`` that wait saying ``reason``."""
    return [i for i in ids if reason in str(store.get(i).get("waiting") or "")]


@pytest.fixture(scope="module")
def shared(redis_url, tmp_path_factory):
    """One real worker (concurrency 4) on a queue of its own, for the tests of this module."""
    from conftest import Worker

    home = tmp_path_factory.mktemp("fair-worker")
    w = Worker(home, redis_url, f"fair-{uuid.uuid4().hex[:6]}", concurrency=4).start()
    yield w
    w.stop()


def test_a_second_user_goes_before_the_first_users_backlog_is_through(shared, make_repo, store):
    repo = make_repo({"job.py": JOB})
    a_ids = _send(_spec(repo, shared.queues, "alice", 0.2), 100)
    b_ids = _send(_spec(repo, shared.queues, "bob", 0.2), 5)
    wait_for(
        "bob's runs to start",
        lambda: all(store.get(i).get("preparing_at") for i in b_ids),
        120,
        every=0.1,
        detail=lambda: [store.get(i)["state"] for i in b_ids],
    )
    started = [i for i in a_ids if store.get(i).get("preparing_at")]
    assert len(started) <= 50, f"{len(started)} of alice's 100 runs started before bob's 5 did"
    for run_id in set(a_ids) - set(started):  # (the rest of the backlog is not needed)
        store.request_abort(run_id)
    records = _ended(store, a_ids + b_ids, timeout=120)
    assert all(records[i]["state"] == "succeeded" for i in b_ids)
    ran = [r for r in records.values() if r["state"] == "succeeded"]
    assert len(ran) >= len(started) + 5 and all(r["attempt"] == 1 for r in ran), "each once"


def test_a_quota_of_two_runs_holds_on_four_slots_and_the_free_slots_serve_others(
    shared, make_repo, store, capsys
):
    queue = shared.queues
    repo = make_repo({"job.py": JOB})
    assert main(["quota", "set", "carol", "--runs", "2"]) == 0
    try:
        c_ids = _send(_spec(repo, queue, "carol", 0.6), 8)
        # a parked run says why it waits
        parked = wait_for(
            "a run of carol's parked at quota",
            lambda: _parked(store, c_ids, "at quota (2/2 runs)"),
            60,
            detail=lambda: {str(store.get(i).get("waiting")) for i in c_ids},
        )[0]
        capsys.readouterr()
        assert main(["show", parked]) == 0
        shown = capsys.readouterr().out
        assert "user carol at quota (2/2 runs)" in shown or store.get(parked)["state"] != "queued"
        assert main(["status", "--json", "--user", "carol"]) == 0
        (row,) = json.loads(capsys.readouterr().out)["quotas"]
        assert row["user"] == "carol" and row["limits"] == {"runs": 2} and row["runs"] <= 2
        d_ids = _send(_spec(repo, queue, "dave", 0.6), 4)
        records = _ended(store, c_ids + d_ids, timeout=180)
    finally:
        main(["quota", "rm", "carol"])
    assert all(r["state"] == "succeeded" for r in records.values())
    spans = [(records[i]["preparing_at"], records[i]["succeeded_at"]) for i in c_ids]
    most = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert most <= 2, f"{most} of carol's runs ran at once on a quota of 2"
    d_first = min(records[i]["preparing_at"] for i in d_ids)
    assert d_first < max(s for s, _ in spans), "dave's runs took the slots carol's quota left"


def test_a_parked_run_can_be_cancelled(shared, make_repo, store):
    from celery_agent import get_run

    queue = shared.queues
    repo = make_repo({"job.py": JOB})
    assert main(["quota", "set", "erin", "--runs", "1", "--queue", queue]) == 0
    try:
        both = _send(_spec(repo, queue, "erin", 5), 2)
        # (either may be the one the worker took first)
        (parked,) = wait_for(
            "one of erin's runs parked at quota",
            lambda: _parked(store, both, "at quota"),
            60,
            detail=lambda: [store.get(i) for i in both],
        )
        (first,) = set(both) - {parked}
        assert "(1/1 runs on " + queue + ")" in store.get(parked)["waiting"]
        assert get_run(parked).cancel() == "queued"
        assert get_run(parked).wait(timeout=30)["state"] == "aborted"
        store.request_abort(first)
        assert get_run(first).wait(timeout=30)["state"] == "aborted"
    finally:
        main(["quota", "rm", "erin", "--queue", queue])


def test_a_user_at_gpu_quota_does_not_hold_the_turn_of_a_user_who_can_start(
    make_worker, make_repo, store
):
    """gina (1 GPU at once) runs one, her next two wait at quota; hank starts more than she did, so
    the round says gina goes first, but she cannot start: hank's runs take the free slots."""
    queue = f"gpu-turn-{uuid.uuid4().hex[:6]}"
    make_worker(queue, concurrency=3, args=("--gpus", "0-3", "--dynamic"),
                CELERY_AGENT_FAKE_GPUS="4")  # fmt: skip
    repo = make_repo({"job.py": JOB})
    assert main(["quota", "set", "gina", "--gpus", "1", "--queue", queue]) == 0
    try:
        g_ids = _send(_spec(repo, queue, "gina", 8) | {"gpus": 1}, 3)
        wait_for(
            "two of gina's runs parked at her GPU quota",
            lambda: len(_parked(store, g_ids, "at quota (1/1 GPUs")) >= 2,
            60,
            detail=lambda: [store.get(i) for i in g_ids],
        )
        (first,) = [i for i in g_ids if store.get(i).get("preparing_at")]
        h_ids = _send(_spec(repo, queue, "hank", 0.2) | {"gpus": 1}, 4)
        h = _ended(store, h_ids, timeout=30)
        g = store.get(first)
        assert g["state"] == "running", "hank's runs all ended while gina's first still ran"
        assert all(r["state"] == "succeeded" for r in h.values())
    finally:
        main(["quota", "rm", "gina", "--queue", queue])
        for run_id in g_ids:
            store.request_abort(run_id)
