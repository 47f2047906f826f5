"""Thin Celery tasks: JSON in, JSON out; the work happens in plain modules.

``submit_task`` (alias of ``run_task``) validates its spec and records the run as queued *before*
the message is sent, so an invalid spec or an unreachable Redis fails at submit and nothing is lost.
The run id is the Celery task id.

Secret env values (``secret_env``) travel in the message only: the run record holds the spec
masked, Flower gets a secret-free ``argsrepr``, and the arguments Celery stores with the result
(``result_extended``) are masked too. A run sent again from its masked record gets the values back
from :func:`.runenv.stash` on the worker.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import Task
from celery.exceptions import Ignore
from celery.signals import celeryd_init, task_prerun
from celery.utils import uuid

from . import attempts, pipeline, runenv, state
from . import sweep as sweep_mod
from .app import app, get_registry, get_settings, get_store
from .defaults import SWEEP_TASK
from .errors import SpecError, UnknownRunError
from .flower import args_repr, display_name
from .requeue import celery_finished, celery_resend, celery_revoked, ended_summary
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
        store = get_store()
        store.create_run(task_id, spec.to_json(), options["queue"])  # masked: no secret values
        runenv.stash(store, task_id, spec)  # for a requeue, which sends the masked record
        return super().apply_async([spec, *args[1:]], kwargs, task_id=task_id, **options)


# resultrepr_maxsize: the summary's preview in the worker's log and the task-succeeded event
# (Flower's result column); its run id and status lead it. Making it costs ~0.1 ms at 1 KB.
@app.task(bind=True, base=SubmitTask, name="celery_agent.run", acks_late=True,
          resultrepr_maxsize=256)  # fmt: skip
def run_task(self: Task, spec: Any = None, *extra: Any, **options: Any) -> dict[str, Any]:
    """Run one experiment on this worker; returns its summary (never raises for a failed run).

    A malformed message (no spec, extra arguments) still ends its run, failed, with why."""
    if extra or options:
        logger.warning("run %s: ignoring unexpected task arguments", self.request.id)
    run_id, ctx = self.request.id, _context(self.request.hostname)
    try:
        spec = _unmask(ctx.store, run_id, spec)
    except SpecError as err:  # sent again from its record, and its secret values are gone
        return _fail(ctx, run_id, err)
    try:
        summary = pipeline.execute(run_id, spec, ctx)
    except pipeline.DuplicateRun as dup:
        record = ctx.store.get(run_id)
        if record.get("state") in state.TERMINAL:  # (the sweep may have ended it: its outcome
            logger.warning("run %s already ended as %s", run_id, record["state"])  # is the result)
            attempts.kill_leftovers(run_id)  # what its dead attempt left running here
            return ended_summary(record)
        logger.warning("dropping a second delivery: %s", dup)
        raise Ignore() from None
    except pipeline.Requeued as requeued:
        logger.warning("%s", requeued)
        raise Ignore() from None
    if isinstance(spec, TaskSpec) and runenv.hides_values(spec):
        runenv.forget(ctx.store, run_id)
    return summary


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
        finished=celery_finished(app, get_store()),
    )
    if any(result.get(k) for k in ("lost_workers", "lost_runs", "requeued_runs", "aborted_runs")):
        logger.warning("sweep: %s", result)
    return result


def _unmask(store: Any, run_id: str, raw: Any) -> Any:
    """The spec with its secret values, as the run needs it (raw data that does not validate is
    left for the pipeline to fail with why)."""
    try:
        spec = TaskSpec.parse(raw)
    except SpecError:
        return raw
    return runenv.with_secrets(store, run_id, spec)


def _fail(ctx: pipeline.WorkerContext, run_id: str, err: SpecError) -> dict[str, Any]:
    """End a run that cannot start, unless it already ended or runs elsewhere (a stale copy)."""
    try:
        ended = ctx.store.get(run_id).get("state") in state.TERMINAL
    except UnknownRunError:  # its record expired: nothing to end
        raise Ignore() from None
    if ended or ctx.store.r.exists(ctx.store.keys.claim(run_id)):
        raise Ignore()
    return pipeline.Job(run_id, ctx).finish(state.FAILED, error=err)


@task_prerun.connect
def _mask_stored_args(task: Any = None, args: Any = None, **_: Any) -> None:
    """Celery stores a task's arguments with its result (``result_extended``) from
    ``task.request``: a run's spec is stored masked there (the run itself gets the real one)."""
    if getattr(task, "name", None) != run_task.name or not args:
        return
    try:
        spec = TaskSpec.parse(args[0])
    except SpecError:
        return
    if spec.masked() is not spec:
        task.request.args = [spec.to_json(), *args[1:]]


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
