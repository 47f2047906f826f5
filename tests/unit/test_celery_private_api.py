"""The private Celery API :class:`celery_agent.tasks.FoldedResult` relies on, checked against the
Celery installed: a new Celery that changes it fails here, by name, before a run's result goes
wrong. FoldedResult writes a run's STARTED and SUCCESS results as Celery's Redis backend would
(``RedisBackend._get_result_meta``, then SET with the result expiry); pyproject.toml pins the
Celery versions this was checked with."""

from __future__ import annotations

import inspect
import json
import os
import tomllib
from pathlib import Path
from typing import Any

import celery
from celery import states
from celery.app.task import Context
from celery.backends.redis import RedisBackend
from packaging.requirements import Requirement

from celery_agent.app import app
from celery_agent.tasks import FoldedResult

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"
PRIVATE = "celery.backends.redis.RedisBackend._get_result_meta"


class CapturingBackend(RedisBackend):
    """Celery's Redis backend with its wire replaced by a list: what Celery itself would SET."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.sets: list[tuple[str | bytes, str, Any]] = []

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        return {"status": states.PENDING, "result": None}

    def _set(self, key: str | bytes, value: str, expires: Any = None) -> None:
        self.sets.append((key, value, self.expires if expires is None else expires))


class Pipe:
    """A pipeline that records what FoldedResult queues on it."""

    def __init__(self) -> None:
        self.sets: list[tuple[str, str, Any]] = []

    def set(self, key: str, value: str, ex: Any = None) -> None:
        self.sets.append((key, value, ex))

    def publish(self, channel: str, value: str) -> None:
        pass


class Task:
    """What FoldedResult reads of a task: its backend and its current request."""

    def __init__(self) -> None:
        self.backend = CapturingBackend(app=app, url="redis://127.0.0.1:6399/0")
        self.request = Context({"id": "r1", "hostname": "celery@h", "task": "celery_agent.run",
                                "args": [{"repo": "x", "entry": "a.py"}], "kwargs": {},
                                "ignore_result": None, "retries": 0})  # fmt: skip
        self.request.delivery_info = {"routing_key": "q1"}


def _decoded(value: str) -> dict[str, Any]:
    meta = json.loads(value)
    meta.pop("date_done", None)  # (the one field that differs: the time of each write)
    return dict(meta)


def test_the_installed_celery_is_in_the_pinned_range():
    pins = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (pin,) = [Requirement(p) for p in pins if Requirement(p).name == "celery"]
    assert pin.specifier.contains(celery.__version__), (
        f"Celery {celery.__version__} is outside {pin.specifier}, the range FoldedResult was "
        f"checked with ({PRIVATE}): run this module's tests, then widen the pin"
    )


def test_the_private_method_still_takes_what_folded_result_passes():
    params = inspect.signature(RedisBackend._get_result_meta).parameters
    missing = {"result", "state", "traceback", "request"} - set(params)
    assert not missing, f"{PRIVATE} no longer takes {sorted(missing)}: FoldedResult must change"


def test_folded_writes_are_what_celery_itself_writes():
    task = Task()
    folded = FoldedResult.of(task)  # type: ignore[arg-type]
    assert folded is not None
    pipe, summary = Pipe(), {"run_id": "r1", "status": "succeeded"}
    folded.started(pipe)
    folded.ended(pipe, summary)
    request, backend = task.request, task.backend
    backend.store_result("r1", {"pid": os.getpid(), "hostname": "celery@h"}, states.STARTED,
                         request=request)  # fmt: skip
    backend.store_result("r1", summary, states.SUCCESS, request=request)
    assert len(backend.sets) == len(pipe.sets) == 2
    for ours, celerys in zip(pipe.sets, backend.sets, strict=True):
        key = celerys[0].decode() if isinstance(celerys[0], bytes) else celerys[0]
        assert ours[0] == key, "the same result key"
        assert _decoded(ours[1]) == _decoded(celerys[1]), (
            f"the result meta Celery writes changed ({PRIVATE}): FoldedResult must follow it"
        )
        assert ours[2] == celerys[2] and ours[2], "the same expiry"
