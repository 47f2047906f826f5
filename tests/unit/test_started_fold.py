"""Which result backends a run's own writes may carry the Celery results for, and what they
queue: STARTED and SUCCESS as the backend writes them, none when the sender asked for none."""

from __future__ import annotations

import json
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
    assert json.loads(started)["status"] == "STARTED"
    done = json.loads(pipe.calls[2][1][1])
    assert done["status"] == "SUCCESS" and done["result"] == {"run_id": "r1", "status": "succeeded"}
    assert done["task_id"] == "r1" and done["date_done"]
    celerys = task.backend._get_result_meta(result=done["result"], state="SUCCESS", traceback=None,
                                            request=task.request) | {"task_id": "r1"}  # fmt: skip
    assert list(done) == list(celerys), "the fields of Celery's own SUCCESS meta, in its order"
    assert {k: v for k, v in done.items() if k != "date_done"} == json.loads(
        task.backend.encode({k: v for k, v in celerys.items() if k != "date_done"})
    )
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
