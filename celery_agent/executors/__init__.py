"""Executors by name, imported only when used: a missing one says what to install."""

from __future__ import annotations

import importlib
import logging
import sys

from ..errors import ExecutorUnavailable
from .base import Executor, ExecutorSettings, PreparedEnv

logger = logging.getLogger(__name__)

__all__ = ["EXECUTORS", "Executor", "ExecutorSettings", "PreparedEnv", "available", "get_executor"]

#: executor name -> "module:class"
EXECUTORS: dict[str, str] = {
    "venv": "celery_agent.executors.venv:VenvExecutor",
    "local": "celery_agent.executors.local:LocalExecutor",
    "docker": "celery_agent.executors.docker:DockerExecutor",
    "conda": "celery_agent.executors.conda:CondaExecutor",
}

#: executor name -> the package extra that brings its dependencies
EXTRAS: dict[str, str] = {"docker": "docker", "conda": "conda"}


def get_executor(name: str, settings: ExecutorSettings) -> Executor:
    """An executor by name, configured with ``settings``; raises ExecutorUnavailable when it cannot load."""
    target = EXECUTORS.get(name)
    if target is None:
        raise ExecutorUnavailable(
            f"executor {name!r} is unknown", f"choose one of {', '.join(EXECUTORS)}"
        )
    module_name, _, class_name = target.partition(":")
    try:  # (sys.modules first: import_module costs ~20 us even for a loaded module)
        module = sys.modules.get(module_name) or importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise _missing(name, module_name, exc) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise _not_in_version(name)
    executor: Executor = cls(settings)
    return executor


def _missing(name: str, module_name: str, exc: ModuleNotFoundError) -> ExecutorUnavailable:
    if exc.name is None or module_name == exc.name or module_name.startswith(exc.name + "."):
        return _not_in_version(name)
    extra = EXTRAS.get(name)
    hint = f"pip install 'celery-agent[{extra}]'" if extra else f"pip install {exc.name}"
    return ExecutorUnavailable(f"executor {name!r} needs the package {exc.name!r}", hint)


def _not_in_version(name: str) -> ExecutorUnavailable:
    return ExecutorUnavailable(
        f"executor {name!r} is not available in this version of celery-agent",
        "this executor is not available in this version; use venv or local",
    )


def available(settings: ExecutorSettings) -> dict[str, str | None]:
    """Each registered executor's name -> None when usable here, else why not (a sentence)."""
    out: dict[str, str | None] = {}
    for name in EXECUTORS:
        try:
            out[name] = get_executor(name, settings).unavailable_reason()
        except ExecutorUnavailable as exc:
            out[name] = str(exc)
    return out
