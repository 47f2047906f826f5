"""Which result backends a run's own writes may carry the Celery results for, and what they
queue: STARTED and SUCCESS as the backend writes them, none when the sender asked for none."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from celery.app.task import Context
from celery.backends.redis import RedisBackend

from celery_agent.app import app
from celery_agent.tasks import FoldedResult, same_redis


def backend(url: str) -> RedisBackend:
    return RedisBackend(app=app, url=url)


def test_the_same_server_and_database_is_the_same_redis():
    client = redis.Redis.from_url("redis://127.0.0.1:6399/0")
    assert same_redis(backend("redis://127.0.0.1:6399/0"), client)


def test_another_database_port_host_or_password_is_not():
    client = redis.Redis.from_url("redis://127.0.0.1:6399/0")
    for url in ("redis://127.0.0.1:6399/1", "redis://127.0.0.1:6400/0",
                "redis://10.0.0.2:6399/0", "redis://:pw@127.0.0.1:6399/0"):  # fmt: skip
        assert not same_redis(backend(url), client), url


def test_a_backend_that_is_not_plain_redis_is_not():
    client = redis.Redis.from_url("redis://127.0.0.1:6399/0")
    assert not same_redis(object(), client)


class Recorder:
    """A pipeline that records what is queued on it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kw: self.calls.append((name, args, kw))


class StoringBackend(RedisBackend):
    stored: list[tuple[str, Any, str]]

    def store_result(self, task_id: str, result: Any, state: str, **kw: Any) -> Any:
        self.stored.append((task_id, result, state))
        return result


class FakeTask:
    def __init__(self, **request: Any) -> None:
        self.backend = StoringBackend(app=app, url="redis://127.0.0.1:6399/0")
        self.backend.stored = []
        self.request = Context({"id": "r1", "hostname": "celery@h", "task": "celery_agent.run",
                                "args": [{"repo": "x", "entry": "a.py"}], "kwargs": {}} | request)  # fmt: skip
        self.request.delivery_info = {"routing_key": "q1"}


def test_a_message_with_ignore_result_unset_leaves_both_results_to_the_run():
    task = FakeTask(ignore_result=None)
    result = FoldedResult.of(task)  # type: ignore[arg-type]
    assert result is not None and result.success
    pipe = Recorder()
    result.started(pipe)
    result.ended(pipe, {"run_id": "r1", "status": "succeeded"})
    assert [name for name, *_ in pipe.calls] == ["set", "publish", "set", "publish"]
    (_, (key, started), ttl), (_, (channel, same), _) = pipe.calls[:2]
    assert key == channel == "celery-task-meta-r1" and same == started
    assert ttl == {"ex": task.backend.expires} and task.backend.expires > 0
    # Celery's result meta with result_extended, written out by hand (docs: "Result backend
    # settings", result_extended; the Redis backend stores the meta as JSON under this key)
    request_part = {"name": "celery_agent.run", "args": [{"repo": "x", "entry": "a.py"}],
                    "kwargs": {}, "worker": "celery@h", "retries": 0, "queue": "q1",
                    "task_id": "r1"}  # fmt: skip
    assert json.loads(started) == {
        "status": "STARTED", "result": {"pid": os.getpid(), "hostname": "celery@h"},
        "traceback": None, "children": [], "date_done": None, **request_part,
    }  # fmt: skip
    done = json.loads(pipe.calls[2][1][1])
    assert done == {
        "status": "SUCCESS", "result": {"run_id": "r1", "status": "succeeded"},
        "traceback": None, "children": [], "date_done": done["date_done"], **request_part,
    }  # fmt: skip
    dated = datetime.fromisoformat(done["date_done"])
    assert dated.tzinfo is not None and abs(datetime.now(UTC) - dated) < timedelta(minutes=1)
    result.store({"run_id": "r1"})
    assert task.backend.stored == [], "the end write carried it"


def test_a_summary_no_end_write_carried_is_stored_by_the_backend():
    task = FakeTask()  # (no ignore_result in the message at all: unset too)
    result = FoldedResult.of(task)  # type: ignore[arg-type]
    assert result is not None
    result.store({"run_id": "r1", "status": "failed"})
    assert task.backend.stored == [("r1", {"run_id": "r1", "status": "failed"}, "SUCCESS")]


def test_an_older_sender_saying_false_gets_its_success_from_celery():
    task = FakeTask(ignore_result=False)
    result = FoldedResult.of(task)  # type: ignore[arg-type]
    assert result is not None and not result.success
    pipe = Recorder()
    result.ended(pipe, {"run_id": "r1"})
    result.store({"run_id": "r1"})
    assert pipe.calls == [] and task.backend.stored == []


def test_a_sender_asking_for_no_result_gets_none():
    assert FoldedResult.of(FakeTask(ignore_result=True)) is None  # type: ignore[arg-type]
