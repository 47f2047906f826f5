"""Thin Celery tasks: JSON in, JSON out; the work happens in plain modules.

``submit_task`` (alias of ``run_task``) validates its spec and records the run as queued *before*
the message is sent, so an invalid spec or an unreachable Redis fails at submit and nothing is lost.
The run id is the Celery task id.

Secret env values (``secret_env``) travel in the message only: the run record holds the spec
masked, Flower gets a secret-free ``argsrepr``, and the arguments Celery stores with the result
(``result_extended``) are masked too. A run sent again from its masked record gets the values back
from :func:`.runenv.stash` on the worker.

Celery's own result writes cost a delivery four round trips of their own: STARTED
(``task_track_started``: a GET, then a SET and a PUBLISH) before the task runs, SUCCESS (the
same) after it. When the result backend is the state store's Redis, the worker leaves them to the
run: at worker start ``run_task`` gets ``track_started`` off and ``ignore_result`` on (errors are
still stored by Celery: ``store_errors_even_if_ignored``), and the run's start and end writes -
round trips it makes anyway - carry the same SET and PUBLISH (:class:`FoldedResult`). The result reads
STARTED from the moment the run is recorded as started and SUCCESS from the moment it is recorded
as ended. Runs are sent with ``ignore_result`` unset (not False), so the worker's setting decides;
a sender that asks for no result (``ignore_result=True``) gets none, and a message that says False
(an older sender) gets its SUCCESS from Celery as before.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import Task, states
from celery.backends.redis import RedisBackend
from celery.exceptions import Ignore
from celery.signals import celeryd_init, task_prerun, worker_ready
from celery.utils import uuid

from . import attempts, dispatch, pipeline, runenv, state, users
from . import sweep as sweep_mod
from .app import app, get_fair, get_registry, get_settings, get_store
from .artifact_store import check_url
from .defaults import SWEEP_TASK, requeue_priority
from .errors import SpecError, UnknownRunError
from .gpus import asked
from .requeue import celery_resend, ended_summary
from .spec import TaskSpec

logger = logging.getLogger(__name__)

_contexts: dict[tuple[int, str], pipeline.WorkerContext] = {}

#: set at worker start when run_task's results ride on the run's own writes
_folded = False


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
        spec = users.stamp(TaskSpec.parse(args[0]))  # whose run it is: kept by every re-send
        users.check_priority(spec.priority, get_settings().max_priority)
        if root := get_settings().artifact_root:  # a scheme no worker could open: say so now
            check_url(root)
        broker = str(self.app.conf.broker_url or "")
        dispatch.first_send(spec, options, bool(self.ignore_result), broker)  # queue, shadow...
        task_id = task_id or uuid()
        store, queue = get_store(), options["queue"]
        owner = {"user": spec.user, "project": spec.project or "", "gpus_wanted": asked(spec.gpus)}
        joining = (  # (its user's waiting set: in the same round trip as the record)
            get_fair().joining(task_id, queue, str(spec.user), spec.priority)
            if get_settings().fair_share
            else None
        )
        store.create_run(task_id, spec.to_json(), queue, joining, **owner)  # masked: no secrets
        runenv.stash(store, task_id, spec)  # for a requeue, which sends the masked record
        if joining is not None and joining.ahead and spec.priority >= 0:  # its user's turn comes
            options.setdefault("priority", requeue_priority(broker))  # before others' waiting runs
        return super().apply_async([spec, *args[1:]], kwargs, task_id=task_id, **options)


# resultrepr_maxsize: the summary's preview in the worker's log and the task-succeeded event
# (Flower's result column); its run id, status, exit code and error lead it (stages.LEADS).
@app.task(bind=True, base=SubmitTask, name=dispatch.RUN_TASK, acks_late=True,
          resultrepr_maxsize=256)  # fmt: skip
def run_task(self: Task, spec: Any = None, *extra: Any, **options: Any) -> dict[str, Any]:
    """Run one experiment on this worker; returns its summary (never raises for a failed run).

    A malformed message (no spec, extra arguments) still ends its run, failed, with why."""
    if extra or options:
        logger.warning("run %s: ignoring unexpected task arguments", self.request.id)
    run_id, ctx = self.request.id, _context(self.request.hostname)
    result = FoldedResult.of(self) if _folded else None
    summary = _run(run_id, ctx, spec, result)
    if result is not None:
        result.store(summary)
    return summary


def _run(
    run_id: str, ctx: pipeline.WorkerContext, spec: Any, result: FoldedResult | None
) -> dict[str, Any]:
    try:
        spec = _unmask(ctx.store, run_id, spec)
    except SpecError as err:  # sent again from its record, and its secret values are gone
        return _fail(ctx, run_id, err)
    try:
        summary = pipeline.execute(run_id, spec, ctx, result)
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
    except pipeline.Parked as parked:
        logger.info("%s", parked)
        raise Ignore() from None
    if isinstance(spec, TaskSpec) and runenv.hides_values(spec):
        runenv.forget(ctx.store, run_id)
    return summary


submit_task = run_task


@app.task(name=SWEEP_TASK, ignore_result=True)
def sweep() -> dict[str, Any]:
    """Mark lost workers and the runs they held; forget long-gone workers (scheduled by beat)."""
    fair = get_fair() if get_settings().fair_share else None
    return sweep_mod.sweeper(app, get_settings(), get_store(), get_registry(), fair)()


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
    if getattr(task, "name", None) != run_task.name or not args or TaskSpec.masks_nothing(args[0]):
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
        _contexts[key] = pipeline.WorkerContext.create(
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


@celeryd_init.connect
def _fold_results(**_: Any) -> None:
    """Carry run_task's results on the run's own writes when the result backend is the state
    store's Redis (see the module's docstring); any other backend keeps Celery's own writes."""
    global _folded
    if (
        run_task.track_started
        and not run_task.ignore_result
        and same_redis(app.backend, get_store().r)
    ):
        run_task.track_started = False
        run_task.ignore_result = True
        run_task.store_errors_even_if_ignored = True
        _folded = True


@worker_ready.connect
def _say_folded(**_: Any) -> None:
    if _folded:  # (said here: logging is not set up yet when the worker decides it)
        logger.info("runs' Celery results go with their start and end writes (one Redis for both)")


def same_redis(backend: Any, client: Any) -> bool:
    """Whether ``backend`` is a plain Redis result backend on the server and database ``client``
    talks to (Sentinel and other backends are not folded)."""
    if type(backend) is not RedisBackend:
        return False
    ours = client.connection_pool.connection_kwargs
    theirs = backend.connparams
    keys = ("host", "port", "db", "path", "username", "password")
    return all(ours.get(k) == theirs.get(k) for k in keys)


class FoldedResult:
    """Celery's result writes for one delivery of ``run_task``, queued on the run's own writes
    as the backend would make them (result meta with the extended fields, SET with the result
    expiry, PUBLISH to the clients waiting on it)."""

    def __init__(self, task: Task, success: bool) -> None:
        self.task = task
        self.success = success  #: whether SUCCESS is ours too (else Celery writes it)
        self.written = False  #: SUCCESS went out with the run's end write
        self._request_meta: dict[str, Any] | None = None

    @classmethod
    def of(cls, task: Task) -> FoldedResult | None:
        """The writes ``task``'s current delivery leaves to the run, or None when its sender
        asked for no result."""
        said = task.request.__dict__.get("ignore_result")  # None: unset, the task's own rules
        return None if said else cls(task, success=said is None)

    def started(self, pipe: Any) -> None:
        """Queue the STARTED result, as ``track_started`` writes it."""
        request = self.task.request
        self._queue(pipe, states.STARTED, {"pid": os.getpid(), "hostname": request.hostname})

    def ended(self, pipe: Any, summary: dict[str, Any]) -> None:
        """Queue the SUCCESS result with ``summary`` (run_task's return value)."""
        if self.success:
            self._queue(pipe, states.SUCCESS, summary)
            self.written = True

    def store(self, summary: dict[str, Any]) -> None:
        """Store the SUCCESS result the Celery way when no end write carried it (a delivery
        that found its run ended, or a message that is not a spec)."""
        if self.success and not self.written:
            request = self.task.request
            self.task.backend.store_result(request.id, summary, states.SUCCESS, request=request)

    def _queue(self, pipe: Any, status: str, result: Any) -> None:
        backend, request = self.task.backend, self.task.request
        if self._request_meta is None:  # (what the request adds, extended fields included, is
            # made once per delivery: a result meta costs ~0.1 ms in a busy pool process)
            self._request_meta = backend._get_result_meta(
                result=None, state=status, traceback=None, request=request
            )
            self._request_meta["task_id"] = request.id
        meta = self._request_meta | {"status": status, "result": result}
        if status in states.READY_STATES:  # dated, with its children, as the backend makes it
            meta["date_done"] = backend.app.now().isoformat()
            meta["children"] = backend.current_task_children(request)
        value = backend.encode(meta)
        key = backend.get_key_for_task(request.id).decode()
        pipe.set(key, value, ex=backend.expires or None)  # (what the backend's SETEX does)
        pipe.publish(key, value)
