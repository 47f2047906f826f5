"""celery-agent: run ML experiments on a fleet of GPU machines through Celery and Redis.

    from celery_agent import TaskSpec, submit_task, submit
    r = submit_task.delay(TaskSpec(repo=".", entry="train.py", params={"lr": 0.1}))
    print(r.get())

Importing the package loads only the spec; everything else, the Celery ``app`` included
(``celery -A celery_agent`` finds it here), is imported on first use, so a library caller or the
CLI does not pay for Celery's task machinery or the worker's bootsteps until it needs them.

When the process runs Flower (``celery -A celery_agent flower``), the celery-agent pages are added
to it here (see :func:`celery_agent.flower.install`).
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from .spec import TaskSpec

if TYPE_CHECKING:
    from .app import app

__all__ = ["app", "RunHandle", "TaskSpec", "get_run", "report", "run_task", "submit", "submit_task"]
__version__ = "0.1.0"

_LAZY = {
    "app": "app",
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


class _Package(types.ModuleType):
    """This package's module type: ``celery_agent.app`` stays the Celery app.

    Once the :mod:`.app` module is loaded the import system sets the package's ``app`` attribute
    to that module; the app inside it is kept there instead (``celery -A celery_agent`` and
    ``from celery_agent import app`` want the app)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "app" and isinstance(value, types.ModuleType):
            value = value.app
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

if "flower" in sys.argv[1:]:  # `celery -A celery_agent flower`: our pages join Flower's before it
    from .flower import flower_command, install  # builds its app (a worker never gets here)

    if flower_command(sys.argv):
        install()
