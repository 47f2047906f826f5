"""Putting a run back on its queue: same run id, same spec, one more attempt.

The sweep requeues a run whose runner is gone (its claim expired) while it has attempts left
(``max_attempts`` in its spec); a drained run requeues itself. Either way the run's record goes back
to ``queued`` first, atomically with the check that nobody claims it, and the message is sent after:
whichever delivery of the run comes first claims it, every other one is dropped (see
:mod:`.attempts`), so the run never runs twice.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

from . import attempts, dispatch, state
from .errors import SpecError
from .spec import TaskSpec
from .state import RunStore

logger = logging.getLogger(__name__)

#: resend(run_id, spec_json, queue): send the run's message again
Resend = Callable[[str, dict[str, Any], str], None]
#: revoked(run_id): whether the run's task was revoked (a revoked id is never run again)
Revoked = Callable[[str], bool]
#: finished(run_id) records the outcome of a run the sweep ended (as its Celery result)
Finished = Callable[[str], None]


def celery_resend(app: Any) -> Resend:
    """A :data:`Resend` that sends the run task through ``app`` with the run's id as task id."""

    def resend(run_id: str, spec: dict[str, Any], queue: str) -> None:
        dispatch.resend(app, run_id, spec, queue)
        logger.info("run %s sent again to queue %s", run_id, queue)

    return resend


def ended_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The Celery result of a run that ended without its runner's summary at hand (the sweep
    ended it, or a later delivery found it ended, and with a result backend apart from the state
    store Celery's STARTED state of that delivery replaced the stored result): the summary as its
    record keeps it."""
    keys = ("run_id", "worker", "commit", "exit_code", "error", "error_stage", "output_dir",
            "timings", "params", "usage", "log_tail", "log_lines")  # fmt: skip
    return {k: record.get(k) for k in keys} | {"status": record.get("state")}


def celery_finished(app: Any, store: RunStore) -> Finished:
    """A :data:`Finished` that stores the run's outcome as its Celery task's result, so a caller
    waiting on ``r.get()`` gets it even when no runner is left to return it."""

    def finished(run_id: str) -> None:
        app.backend.store_result(run_id, ended_summary(store.get(run_id)), "SUCCESS")

    return finished


def celery_revoked(app: Any) -> Revoked:
    """A :data:`Revoked` that asks ``app``'s result backend (``revoke(terminate=True)`` marks it)."""
    return lambda run_id: app.AsyncResult(run_id).state == "REVOKED"


def recover(
    store: RunStore,
    run_id: str,
    why: str,
    resend: Resend | None,
    revoked: Revoked | None = None,
    finished: Finished | None = None,
) -> str:
    """Requeue or end a run whose runner is gone; returns what happened ('' when nothing did).

    A cancelled or revoked run ends aborted; a run whose spec no longer validates, or with no way to send it
    (``resend`` None), ends lost; otherwise it is requeued while attempts remain.
    """
    record = store.get(run_id)
    if record.get("state") not in state.ACTIVE or store.r.exists(store.keys.claim(run_id)):
        return ""
    what = _recover(store, run_id, record, why, resend, revoked)
    if what in (state.ABORTED, state.LOST):
        if record.get("host") == socket.gethostname():  # its dead attempt's processes, here
            attempts.kill_leftovers(run_id)  # (other machines' workers reap their own)
        if finished is not None:
            finished(run_id)
    return what


def _recover(
    store: RunStore,
    run_id: str,
    record: dict[str, Any],
    why: str,
    resend: Resend | None,
    revoked: Revoked | None,
) -> str:
    if store.is_aborted(run_id) or (revoked is not None and revoked(run_id)):
        store.transition(run_id, state.ABORTED, error=f"cancelled or revoked; {why}")
        return state.ABORTED
    spec = _spec(record)
    if spec is None or resend is None:
        store.transition(run_id, state.LOST, error=why, error_stage="run")
        return state.LOST
    outcome = store.requeue_lost(
        run_id, spec.max_attempts, f"{why}; max_attempts is {spec.max_attempts}"
    )
    if outcome == "requeued":
        resend(run_id, spec.to_json(), str(record.get("queue") or spec.queue))
        return state.QUEUED
    return state.LOST if outcome == "lost" else ""


def _spec(record: dict[str, Any]) -> TaskSpec | None:
    try:
        return TaskSpec.parse(record.get("spec") or {})
    except SpecError:
        return None
