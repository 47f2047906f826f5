"""The Celery app: our defaults first, then the user's config module, then CELERY_* variables.

``celery -A celery_agent worker -Q gpu0`` finds this app through the package. Configuration:

- ``CELERY_AGENT_REDIS_URL``: broker, result backend and state store at once
  (default ``redis://localhost:6379/0``);
- ``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND``: override each (Celery reads them itself);
- a Redis URL may be ``redis://``, ``rediss://`` (TLS) or ``sentinel://``; the app gives Celery the
  transport options and TLS settings each needs (see :mod:`.redisconn`);
- ``CELERY_AGENT_CONFIG``: an importable module of Celery settings (see ``config/``); one that
  sets ``task_serializer = "auth"`` turns on message signing (Celery's ``setup_security``).

The worker command gains ``--gpus``, ``--dynamic`` and ``--cpu-only`` and a bootstep that sends
heartbeats (see :mod:`.worker`), named here and imported only by a worker.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import click
from celery import Celery
from kombu.utils.json import register_type

from . import defaults, redisconn
from .errors import ConfigError
from .fairorder import FairOrder, fair_order
from .settings import Settings
from .spec import TaskSpec
from .state import RunStore
from .workers import WorkerRegistry

CONFIG_MODULE_ENV = "CELERY_AGENT_CONFIG"
#: the agent's worker bootstep, by name: the worker imports it, a client never does
WORKER_STEP = "celery_agent.worker:AgentStep"
#: options the agent adds to ``celery worker`` (the bootstep takes them)
WORKER_OPTIONS = [
    click.Option(["--gpus"], default=None, help="GPUs this worker owns: 0 | 0,1 | 0-3 | all"),
    click.Option(["--dynamic"], is_flag=True, default=False, help="lease --gpus to runs by need"),
    click.Option(["--cpu-only"], is_flag=True, default=False, help="runs see no GPU"),
]

logger = logging.getLogger(__name__)


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
        app.on_after_configure.connect(_setup_signing, weak=False)
    app.on_after_configure.connect(_use_redis_urls, weak=False)
    for option in WORKER_OPTIONS:
        app.user_options["worker"].add(option)
    app.steps["worker"].add(WORKER_STEP)
    return app


#: (URL setting, its transport options, its TLS setting) for the broker and the result backend
_REDIS_ROLES = (
    ("broker_url", "broker_transport_options", "broker_use_ssl"),
    ("result_backend", "result_backend_transport_options", "redis_backend_use_ssl"),
)


def _use_redis_urls(sender: Celery, source: Any, replace: bool = False, **_: Any) -> None:
    """Give Celery its broker and backend URLs in the form it takes, with the transport options
    (sentinel master name) and TLS settings they need; options the config already sets win
    unless ``replace``."""
    for url_key, options_key, tls_key in _REDIS_ROLES:
        url = getattr(source, url_key, None)
        if not isinstance(url, str):
            continue
        try:
            celery_url, options, tls = redisconn.celery_form(url)
        except ConfigError as err:  # the store raises it where it is used; Celery says its own
            logger.warning("%s: %s", url_key, err)
            continue
        source[url_key] = celery_url
        if options:
            given = dict(source.get(options_key) or {})
            source[options_key] = given | options if replace else options | given
        if tls and (replace or not source.get(tls_key)):
            source[tls_key] = tls


def _setup_signing(sender: Celery, source: Any, **_: Any) -> None:
    """Sign every message sent and refuse unsigned ones when the config module asks for it."""
    if source.get("task_serializer") == "auth":
        sender.setup_security()


def _register_spec_type() -> None:
    """Let a TaskSpec pass through Celery's JSON serializer: sent as its fields, read back as
    that plain data. No process validates a spec it only passes on (the worker parses the one it
    runs, once); a client reading a result's arguments gets JSON data."""
    register_type(TaskSpec, None, _spec_fields, TaskSpec.model_validate)  # (no marker: no decoder)
    # messages sent by earlier versions wrap the fields in kombu's type envelope
    register_type(_EnvelopedSpec, "celery_agent.TaskSpec", _envelope, _enveloped)


def _spec_fields(spec: TaskSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", exclude_defaults=True) | {
        "repo": spec.repo,
        "entry": spec.entry,
    }


class _EnvelopedSpec:
    """The type of the envelope ``{"__type__": "celery_agent.TaskSpec", "__value__": fields}``
    (decoded only; nothing is sent that way now)."""


def _envelope(_: _EnvelopedSpec) -> Any:
    raise TypeError("specs are sent as plain fields")


def _enveloped(data: Any) -> Any:
    """The fields of an enveloped spec, as a spec sent now reads."""
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


_fairs: list[FairOrder] = []


def get_fair() -> FairOrder:
    """Fair order and quotas on this process's store, with the settings' quotas and weights
    (made once per store: its scripts are hashed when it is made)."""
    store = get_store()
    if not _fairs or _fairs[0].store is not store:
        _fairs[:] = [fair_order(store, get_settings())]
    return _fairs[0]


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
    app.conf.update(defaults.broker_options(settings))  # (Redis and RabbitMQ differ)
    _use_redis_urls(app, app.conf, replace=True)
    app.close()  # connections to the broker used so far
    app.__dict__.pop("amqp", None)  # queues declared anew, with the broker's options
    return settings


_register_spec_type()
app = create_app()
