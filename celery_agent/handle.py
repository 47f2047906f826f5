"""RunHandle: what a submitter holds on to: wait for the outcome, read the log, cancel."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from celery.result import AsyncResult

from .errors import StateError
from .spec import TaskSpec
from .state import TERMINAL, RunStore


class RunHandle:
    """A submitted run, by id."""

    def __init__(self, run_id: str, store: RunStore, result: AsyncResult | None = None) -> None:
        self.run_id = run_id
        self.store = store
        self.result = result

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r})"

    @property
    def id(self) -> str:
        """The run id (the Celery task id)."""
        return self.run_id

    def info(self) -> dict[str, Any]:
        """The run record as it is now."""
        return self.store.get(self.run_id)

    @property
    def state(self) -> str:
        """queued, preparing, running, or a terminal state."""
        return str(self.info().get("state", ""))

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> dict[str, Any]:
        """Block until the run ends; returns its record. Raises StateError on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self.info()
            if record.get("state") in TERMINAL:
                return record
            if deadline is not None and time.monotonic() > deadline:
                raise StateError(
                    f"run {self.run_id} is still {record.get('state')} after {timeout}s",
                    "wait longer, or check the worker with `celery-agent show`",
                )
            time.sleep(poll)

    def logs(self, follow: bool = False) -> Iterator[str]:
        """The run's log lines; with ``follow``, until the run ends."""
        if follow:
            yield from self.store.follow_log(self.run_id)
        else:
            yield from self.store.read_log(self.run_id)[1]

    def cancel(self) -> str:
        """Ask the run to stop; returns the state it was in (a queued run ends at once)."""
        return self.store.request_abort(self.run_id)


def submit(spec: TaskSpec | dict[str, Any], **options: Any) -> RunHandle:
    """Validate, record and queue a run on its spec's queue; returns a handle to it."""
    from .app import get_store
    from .tasks import submit_task

    result = submit_task.apply_async(args=[TaskSpec.parse(spec)], **options)
    return RunHandle(result.id, get_store(), result)


def get_run(run_id: str, store: RunStore | None = None) -> RunHandle:
    """A handle to an already submitted run in ``store`` (this process's run store by default);
    the id may be a unique prefix."""
    if store is None:
        from .app import get_store

        store = get_store()
    return RunHandle(store.find(run_id), store)
