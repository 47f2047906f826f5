"""celery-agent: run ML experiments on a fleet of GPU machines through Celery and Redis.

    from celery_agent import TaskSpec, submit_task, submit
    r = submit_task.delay(TaskSpec(repo=".", entry="train.py", params={"lr": 0.1}))
    print(r.get())

``app`` is imported at once (``celery -A celery_agent`` looks for it); the rest on first use, so
the worker's plain modules import without Celery's task machinery and the CLI starts fast.
"""

from __future__ import annotations

from typing import Any

from .app import app
from .spec import TaskSpec

__all__ = ["app", "RunHandle", "TaskSpec", "get_run", "report", "run_task", "submit", "submit_task"]
__version__ = "0.1.0"

_LAZY = {
    "RunHandle": "handle",
    "get_run": "handle",
    "submit": "handle",
    "run_task": "tasks",
    "submit_task": "tasks",
    "report": "metrics",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'celery_agent' has no attribute {name!r}")
