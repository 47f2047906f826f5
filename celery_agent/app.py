"""The Celery app: our defaults first, then the user's config module, then CELERY_* variables.

``celery -A celery_agent worker -Q gpu0`` finds this app through the package. Configuration:

- ``CELERY_AGENT_REDIS_URL``: broker, result backend and state store at once
  (default ``redis://localhost:6379/0``);
- ``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND``: override each (Celery reads them itself);
- ``CELERY_AGENT_CONFIG``: an importable module of Celery settings (see ``config/``).

The worker command gains ``--gpus``, ``--dynamic`` and ``--cpu-only`` and a bootstep that sends
heartbeats (see :mod:`.worker`).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from celery import Celery
from kombu.utils.json import register_type
from pydantic import ValidationError

from . import defaults, worker
from .settings import Settings
from .spec import TaskSpec
from .state import RunStore
from .workers import WorkerRegistry

CONFIG_MODULE_ENV = "CELERY_AGENT_CONFIG"


def create_app(environ: Mapping[str, str] | None = None) -> Celery:
    """A configured Celery app for the environment ``environ`` (the process's by default)."""
    environ = os.environ if environ is None else environ
    settings = Settings.load(environ)
    app = Celery("celery_agent", include=["celery_agent.tasks"])
    module = environ.get(CONFIG_MODULE_ENV)
    # Celery ranks added defaults above a config module, so leave out what the module sets.
    named = set(vars(importlib.import_module(module))) if module else set()
    app.add_defaults({k: v for k, v in defaults.celery_config(settings).items() if k not in named})
    if module:
        app.config_from_object(module)
    worker.install(app)
    return app


def _register_spec_type() -> None:
    """Let a TaskSpec pass through Celery's JSON serializer as itself."""
    register_type(
        TaskSpec,
        "celery_agent.TaskSpec",
        lambda spec: (
            spec.model_dump(mode="json", exclude_defaults=True)
            | {"repo": spec.repo, "entry": spec.entry}
        ),
        _decode_spec,
    )


def _decode_spec(data: Any) -> Any:
    """A TaskSpec, or the raw data when it does not validate (the run then fails with why)."""
    try:
        return TaskSpec.model_validate(data)
    except ValidationError:
        return data


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The agent settings of this process, read once."""
    return Settings.load()


_stores: dict[int, RunStore] = {}


def get_store() -> RunStore:
    """This process's run store (one connection pool per process, re-made after a fork)."""
    pid = os.getpid()
    if pid not in _stores:
        s = get_settings()
        _stores.clear()
        _stores[pid] = RunStore.from_url(s.redis_url, s.prefix, s.log_maxlen)
    return _stores[pid]


def get_registry() -> WorkerRegistry:
    """The worker registry on this process's store."""
    store = get_store()
    return WorkerRegistry(store.r, store.keys)


def use_environment() -> Settings:
    """Re-read the settings after os.environ changed, and point the app at them."""
    get_settings.cache_clear()
    _stores.clear()
    settings = get_settings()
    app.conf.update(broker_url=settings.broker, result_backend=settings.backend)
    return settings


_register_spec_type()
app = create_app()
