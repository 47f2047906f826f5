"""Thin Celery tasks: JSON in, JSON out; the work happens in plain modules.

``submit_task`` (alias of ``run_task``) validates its spec and records the run as queued *before*
the message is sent, so an invalid spec or an unreachable Redis fails at submit and nothing is lost.
The run id is the Celery task id.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import Task
from celery.exceptions import Ignore
from celery.signals import celeryd_init
from celery.utils import uuid

from . import pipeline, runenv
from . import sweep as sweep_mod
from .app import app, get_registry, get_settings, get_store
from .defaults import SWEEP_TASK
from .flower import args_repr, display_name
from .requeue import celery_resend, celery_revoked
from .spec import TaskSpec

logger = logging.getLogger(__name__)

_contexts: dict[tuple[int, str], pipeline.WorkerContext] = {}


class SubmitTask(Task):
    """A task whose first argument is a TaskSpec: validated and recorded before it is queued."""

    def apply_async(
        self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any
    ) -> Any:
        """Validate the spec, record the run (queued) and send it to the spec's queue."""
        args = list(args or ())
        if kwargs and "spec" in kwargs:
            args, kwargs = [kwargs.pop("spec"), *args], kwargs
        if not args:
            raise TypeError("submit_task needs a TaskSpec (or dict) as its first argument")
        spec = TaskSpec.parse(args[0])
        options.setdefault("queue", spec.queue)
        options.setdefault("shadow", display_name(spec))  # what Flower and events show
        options.setdefault("argsrepr", args_repr(spec))  # short, secret-free
        task_id = task_id or uuid()
        get_store().create_run(task_id, spec.to_json(), options["queue"])
        return super().apply_async([spec, *args[1:]], kwargs, task_id=task_id, **options)


@app.task(bind=True, base=SubmitTask, name="celery_agent.run", acks_late=True)
def run_task(self: Task, spec: Any = None, *extra: Any, **options: Any) -> dict[str, Any]:
    """Run one experiment on this worker; returns its summary (never raises for a failed run).

    A malformed message (no spec, extra arguments) still ends its run, failed, with why."""
    if extra or options:
        logger.warning("run %s: ignoring unexpected task arguments", self.request.id)
    try:
        return pipeline.execute(self.request.id, spec, _context(self.request.hostname))
    except pipeline.DuplicateRun as dup:
        logger.warning("dropping a second delivery: %s", dup)
        raise Ignore() from None
    except pipeline.Requeued as requeued:
        logger.warning("%s", requeued)
        raise Ignore() from None


submit_task = run_task


@app.task(name=SWEEP_TASK, ignore_result=True)
def sweep() -> dict[str, Any]:
    """Mark lost workers and the runs they held; forget long-gone workers (scheduled by beat)."""
    result = sweep_mod.sweep(
        get_store(),
        get_registry(),
        lock_ttl=get_settings().sweep_interval / 2,
        resend=celery_resend(app),
        revoked=celery_revoked(app),
    )
    if any(result.get(k) for k in ("lost_workers", "lost_runs", "requeued_runs", "aborted_runs")):
        logger.warning("sweep: %s", result)
    return result


def _context(hostname: str | None) -> pipeline.WorkerContext:
    name = hostname or f"celery@{socket.gethostname()}"
    key = (os.getpid(), name)
    if key not in _contexts:
        _contexts[key] = pipeline.WorkerContext(
            get_settings(), get_store(), name, resend=celery_resend(app)
        )
    return _contexts[key]


@celeryd_init.connect
def _remember_concurrency(
    sender: Any = None, instance: Any = None, conf: Any = None, options: Any = None, **kw: Any
) -> None:
    """Let runs size their thread pools to the worker's CPU share (pool children inherit this)."""
    concurrency = (options or {}).get("concurrency") or getattr(conf, "worker_concurrency", None)
    if concurrency:
        os.environ[runenv.CONCURRENCY_ENV] = str(concurrency)
