"""Fair order and quotas with a real worker (concurrency 4): a second user's runs go before the
first user's backlog is through; a user at quota never holds more than the quota, and the slots
the quota leaves free serve the others; a parked run is listed as waiting and can be cancelled."""

from __future__ import annotations

import time
import uuid

import pytest

from celery_agent import submit_task

pytestmark = pytest.mark.integration

JOB = "import time, sys\ntime.sleep(float(sys.argv[1]))\n"


def _spec(repo, queue: str, user: str, work: float) -> dict:
    return {"repo": str(repo), "entry": "job.py", "executor": "local", "queue": queue,
            "user": user, "args": [str(work)]}  # fmt: skip


def _send(spec: dict, n: int) -> list[str]:
    return [submit_task.apply_async([spec], ignore_result=True).id for _ in range(n)]


def _ended(store, ids: list[str], timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        records = {i: store.get(i) for i in ids}
        if all(r.get("state") in ("succeeded", "failed", "aborted") for r in records.values()):
            return records
        assert time.monotonic() < deadline, [r.get("state") for r in records.values()]
        time.sleep(0.2)


def test_a_second_user_goes_before_the_first_users_backlog_is_through(
    make_worker, make_repo, store
):
    queue = f"fair-{uuid.uuid4().hex[:6]}"
    make_worker(queue, concurrency=4)
    repo = make_repo({"job.py": JOB})
    a_ids = _send(_spec(repo, queue, "alice", 0.2), 100)
    b_ids = _send(_spec(repo, queue, "bob", 0.2), 5)
    records = _ended(store, a_ids + b_ids, timeout=240)
    assert all(r["state"] == "succeeded" for r in records.values())
    a_starts = sorted(records[i]["preparing_at"] for i in a_ids)
    b_last = max(records[i]["preparing_at"] for i in b_ids)
    behind = sum(t > b_last for t in a_starts)
    assert behind >= 50, f"only {behind} of alice's 100 runs started after bob's last one"
    assert all(records[i]["attempt"] == 1 for i in a_ids + b_ids), "each run started once"

