"""A run's Celery result reads STARTED while it runs, as ``task_track_started`` makes it, and
SUCCESS with its summary once it ended, whether the run's own writes carry them (result backend =
the state store's Redis) or Celery writes them (another backend, an older sender)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import redis

from celery_agent import TaskSpec, submit_task
from celery_agent.app import app
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration

JOB = "import time\nprint('up', flush=True)\ntime.sleep(2)\n"
EXTENDED = {"status", "result", "traceback", "children", "date_done", "task_id", "name", "args",
            "kwargs", "worker", "retries", "queue"}  # fmt: skip


def spec(repo: Path, queue: str) -> TaskSpec:
    return TaskSpec.parse({"repo": str(repo), "entry": "job.py", "queue": queue})


def started_meta(client: redis.Redis, run_id: str, timeout: float = 60) -> dict:
    """The result meta once it reads STARTED (fails when the run ends first or time runs out)."""
    key = f"celery-task-meta-{run_id}"

    def started() -> dict | None:
        raw = client.get(key)
        meta = json.loads(raw) if raw else {}
        assert meta.get("status") in (None, "PENDING", "STARTED"), meta
        return meta if meta.get("status") == "STARTED" else None

    return wait_for(f"a STARTED result for {run_id}", started, timeout, every=0.02)


def task_done(worker, task_id: str) -> bool:
    """Whether the worker logged the task's end (``Task run: job.py [queue][id] succeeded``),
    which its pool process does after it stored any result it stores."""
    return f"[{task_id}] succeeded in" in worker.output()


def test_the_start_write_carries_the_started_result(worker, make_repo, store):
    r = submit_task.delay(spec(make_repo({"job.py": JOB}), worker.queues))
    meta = started_meta(store.r, r.id)
    assert set(meta) == EXTENDED, "the same fields Celery stores with result_extended"
    assert meta["task_id"] == r.id and meta["name"] == "celery_agent.run"
    assert meta["queue"] == worker.queues and meta["worker"].startswith(worker.name)
    assert "job.py" in json.dumps(meta["args"]) and meta["date_done"] is None
    assert set(meta["result"]) == {"pid", "hostname"}
    assert store.get(r.id)["state"] in ("preparing", "running"), "recorded started at once"
    assert app.AsyncResult(r.id).state == "STARTED"
    out = r.get(timeout=60)
    assert out["status"] == "succeeded", out
    assert app.AsyncResult(r.id).state == "SUCCESS"
    assert "results go with their start and end writes" in worker.output()
    done = json.loads(store.r.get(f"celery-task-meta-{r.id}"))
    assert set(done) == EXTENDED and done["args"] == meta["args"]
    assert 0 < store.r.ttl(f"celery-task-meta-{r.id}") <= app.conf.result_expires


def test_another_result_backend_gets_celerys_own_started_write(make_worker, make_repo, store,
                                                                redis_url):  # fmt: skip
    other = redis_url.rsplit("/", 1)[0] + "/5"
    w = make_worker("started-other-db", CELERY_RESULT_BACKEND=other)
    r = submit_task.delay(spec(make_repo({"job.py": JOB}), w.queues))
    meta = started_meta(redis.Redis.from_url(other), r.id)
    assert set(meta) == EXTENDED and meta["task_id"] == r.id
    assert store.r.get(f"celery-task-meta-{r.id}") is None, "nothing in the state store's db"
    wait_for("the run to succeed", lambda: store.get(r.id)["state"] == "succeeded", 60)
    assert "results go with" not in w.output(), "Celery writes them itself"


QUICK = "print('up')\n"


def wait_ended(store, run_id: str, timeout: float = 60) -> dict:
    def ended() -> dict | None:
        record = store.get(run_id)
        return record if record["state"] in ("succeeded", "failed") else None

    return wait_for(f"run {run_id} to end", ended, timeout, every=0.02)


def test_the_runs_own_writes_are_the_only_writes_of_its_result(worker, make_repo, store):
    """No GET and no write of Celery's own on the result key (its writes are a GET, a SETEX and
    a PUBLISH): STARTED and SUCCESS, each a SET and a PUBLISH, go with the run's start and end
    writes (no client waits on it here)."""
    seen: list[tuple[str, ...]] = []
    stop = threading.Event()

    def watch() -> None:
        with store.r.monitor() as monitor:
            for command in monitor.listen():
                seen.append(tuple(command["command"].split(" ", 2)[:2]))
                if stop.is_set():
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    wait_for(
        "the monitor to see a command",
        lambda: store.r.echo("monitor-ready") and any("monitor-ready" in " ".join(c) for c in seen),
        60,
        every=0.02,
    )
    r = submit_task.apply_async([spec(make_repo({"job.py": QUICK}), worker.queues)])
    assert wait_ended(store, r.id)["state"] == "succeeded"
    # (anything Celery writes comes before this line)
    wait_for("the worker to log the task's end", lambda: task_done(worker, r.id), 60, every=0.02)
    stop.set()
    store.r.ping()  # (one more command: the watcher sees stop)
    watcher.join(10)
    key = f"celery-task-meta-{r.id}"
    on_key = [name.upper() for name, *rest in seen if rest and rest[0].strip('"') == key
              and name.upper() not in ("SUBSCRIBE", "UNSUBSCRIBE")]  # (the sender's)  # fmt: skip
    assert on_key == ["SET", "PUBLISH", "SET", "PUBLISH"], on_key
    meta = json.loads(store.r.get(key))
    assert meta["status"] == "SUCCESS" and set(meta) == EXTENDED
    assert meta["result"]["run_id"] == r.id and meta["result"]["status"] == "succeeded"


def test_a_sender_that_asks_for_no_result_gets_none(worker, make_repo, store):
    r = submit_task.apply_async([spec(make_repo({"job.py": QUICK}), worker.queues)],
                                ignore_result=True)  # fmt: skip
    assert wait_ended(store, r.id)["state"] == "succeeded"
    # Celery is done with it: it wrote no result
    wait_for("the worker to log the task's end", lambda: task_done(worker, r.id), 60, every=0.02)
    assert store.r.get(f"celery-task-meta-{r.id}") is None


def test_a_message_that_says_ignore_result_false_gets_its_success_from_celery(
    worker, make_repo, store
):
    """As an older sender sends it: Celery writes SUCCESS itself (once, the same meta)."""
    r = submit_task.apply_async([spec(make_repo({"job.py": QUICK}), worker.queues)],
                                ignore_result=False)  # fmt: skip
    out = r.get(timeout=60)
    assert out["status"] == "succeeded" and out["run_id"] == r.id
    meta = json.loads(store.r.get(f"celery-task-meta-{r.id}"))
    assert meta["status"] == "SUCCESS" and set(meta) == EXTENDED and meta["result"] == out
