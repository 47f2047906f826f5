"""RunHandle: what a submitter holds on to: wait for the outcome, read the log, cancel."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import redis
from celery.result import AsyncResult

from . import follow as follow_mod
from .digests import wait_left
from .serving import ArtifactStoreWarning, NoWorkerWarning, QueueCover, queue_cover
from .spec import TaskSpec
from .state import RunStore
from .workers import WorkerRegistry

logger = logging.getLogger(__name__)


class RunHandle:
    """A submitted run, by id."""

    def __init__(self, run_id: str, store: RunStore, result: AsyncResult | None = None) -> None:
        self.run_id = run_id
        self.store = store
        self.result = result
        #: who served the run's queue when it was submitted (None for a handle from get_run)
        self.cover: QueueCover | None = None

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r})"

    @property
    def id(self) -> str:
        """The run id (the Celery task id)."""
        return self.run_id

    def info(self) -> dict[str, Any]:
        """The run record as it is now."""
        return self.store.get(self.run_id)

    def artifacts(self, root: str | None = None, wait: float = 0.0) -> list[dict[str, Any]]:
        """The files the run kept in the artifact store: its manifest (path, size, sha256);
        ``wait``: seconds to wait for outputs still uploading in the background."""
        from .artifacts import of_run

        return of_run(self.settled(wait), root)[1]

    def pull(
        self,
        dest: str | Path = ".",
        root: str | None = None,
        *,
        paths: Sequence[str] = (),
        progress: Callable[[str, int], None] | None = None,
        wait: float = 600.0,
    ) -> list[Path]:
        """Download the files the run kept into ``dest`` (each checked against its sha256, each
        whole or not at all); returns their local paths. ``paths``: files or folders of its
        manifest (default: all); ``root``: the artifact root as this machine reaches it, default
        the recorded one; ``progress`` is told (path, bytes) as each chunk arrives; ``wait``:
        seconds to wait for outputs still uploading in the background."""
        from .pull import pull

        return pull(self.settled(wait), Path(dest), paths, root, progress)

    def settled(self, wait: float, poll: float = 0.2) -> dict[str, Any]:
        """The run record once its outputs no longer upload in the background and their sha256
        are there (or will not come: :func:`.digests.wait_left`), or after ``wait`` seconds
        (whichever comes first)."""
        deadline = time.monotonic() + wait
        record = self.info()
        while (_uploading(record) or wait_left(record, self.store)) and time.monotonic() < deadline:
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
            record = self.info()
        return record

    @property
    def state(self) -> str:
        """queued, preparing, running, or a terminal state."""
        return str(self.info().get("state", ""))

    def wait(
        self,
        timeout: float | None = None,
        poll: float = 0.5,
        notify: Callable[[str], None] | None = logger.warning,
    ) -> dict[str, Any]:
        """Block until the run ends; returns its record. Raises StateError after ``timeout``
        seconds. While the run waits on a queue no online worker serves, ``notify`` is told so
        every few seconds (a warning in this module's log by default)."""
        return follow_mod.wait(self._watch(timeout, notify), poll)

    def logs(
        self,
        follow: bool = False,
        timeout: float | None = None,
        notify: Callable[[str], None] | None = logger.warning,
    ) -> Iterator[str]:
        """The run's log lines; with ``follow``, until the run ends (or ``timeout`` seconds pass:
        then StateError), ``notify`` told every few seconds while no worker serves its queue."""
        if follow:
            yield from follow_mod.follow(self._watch(timeout, notify))
        else:
            yield from self.store.read_log(self.run_id)[1]

    def _watch(
        self, timeout: float | None, notify: Callable[[str], None] | None
    ) -> follow_mod.Watch:
        return follow_mod.Watch(self.store, self.run_id, timeout=timeout, notify=notify)

    def cancel(self) -> str:
        """Ask the run to stop; returns the state it was in (a queued run ends at once)."""
        return self.store.request_abort(self.run_id)


def submit(
    spec: TaskSpec | dict[str, Any], *, require_worker: bool = False, **options: Any
) -> RunHandle:
    """Validate, record and queue a run on its spec's queue; returns a handle to it.

    The worker registry is looked at first: when no online worker serves the queue, a
    :class:`~celery_agent.serving.NoWorkerWarning` names the queues that are served (the run
    waits for a worker), or with ``require_worker`` a
    :class:`~celery_agent.serving.NoWorkerError` is raised and nothing is sent."""
    from .app import get_store
    from .tasks import submit_task

    spec = TaskSpec.parse(spec)
    store = get_store()
    if spec.inputs:  # run:// inputs checked against their run's record now, not on the worker
        spec = spec.model_copy(update={"inputs": _checked_inputs(spec, store)})
    queue = str(options.get("queue") or spec.queue)
    try:
        cover = queue_cover(WorkerRegistry(store.r, store.keys), queue)
    except redis.RedisError:
        store.ping()  # (raises the StateError that says where Redis was expected)
        raise
    if not cover.covered:
        if require_worker:
            raise cover.error()
        warnings.warn(f"{cover.problem()} ({cover.hint()})", NoWorkerWarning, stacklevel=2)
    if cover.broken:  # (its outputs would stay on the worker's disk)
        warnings.warn(cover.store_problem(), ArtifactStoreWarning, stacklevel=2)
    result = submit_task.apply_async(args=[spec], **options)
    handle = RunHandle(result.id, store, result)
    handle.cover = cover
    return handle


def _checked_inputs(spec: TaskSpec, store: RunStore) -> dict[str, str]:
    from .inputs import checked
    from .lookup import find_run

    return checked(spec.inputs, lambda ref: store.get(find_run(store, ref)))


def get_run(ref: str, store: RunStore | None = None) -> RunHandle:
    """A handle to an already submitted run in ``store`` (this process's run store by default),
    by its id, a unique id prefix or a unique name."""
    from .lookup import find_run

    if store is None:
        from .app import get_store

        store = get_store()
    return RunHandle(find_run(store, ref), store)


def _uploading(record: dict[str, Any]) -> bool:
    return (record.get("artifacts") or {}).get("status") == "uploading"
