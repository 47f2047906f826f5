"""Waiting for a run to end without waiting in silence: its log lines as they come, a notice
every few seconds while it sits on a queue no online worker serves, and an optional deadline."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from .errors import StateError
from .serving import queue_cover
from .state import QUEUED, TERMINAL, RunStore
from .workers import WorkerRegistry

#: seconds between two "waiting for a worker" notices
NOTICE_EVERY = 5.0


class Watch:
    """The deadline and the no-worker notices of one wait on one run."""

    def __init__(self, store: RunStore, run_id: str, *, timeout: float | None = None,
                 notify: Callable[[str], None] | None = None,
                 notice_every: float | None = None) -> None:  # fmt: skip
        if timeout is not None and timeout <= 0:
            raise StateError(f"a wait of {timeout}s is no wait", "give seconds > 0, or no timeout")
        self.store, self.run_id, self.timeout = store, run_id, timeout
        self.notify, self.notice_every = notify, notice_every or NOTICE_EVERY
        now = time.monotonic()
        self.deadline = None if timeout is None else now + timeout
        self.next_notice = now + self.notice_every

    def check(self, record: dict[str, Any]) -> None:
        """Raise StateError past the deadline; say so when the queued run has no worker."""
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            raise StateError(
                f"stopped waiting: run {self.run_id} is still {record.get('state')} after "
                f"{self.timeout:g}s",
                f"it goes on: follow it with `celery-agent logs -f {self.run_id}`, or cancel it",
            )
        if self.notify is None or record.get("state") != QUEUED or now < self.next_notice:
            return
        self.next_notice = now + self.notice_every
        queue = str(record.get("queue") or "")
        if not queue_cover(WorkerRegistry(self.store.r, self.store.keys), queue).covered:
            self.notify(f"waiting for a worker on queue {queue}, none online")

    def remaining(self, cap: float) -> float:
        """Seconds to block for at most: ``cap``, or less when the deadline or the next notice
        is nearer."""
        due = min(self.next_notice, self.deadline or self.next_notice) - time.monotonic()
        return max(0.05, min(cap, due))


def follow(watch: Watch, poll: float = 1.0) -> Iterator[str]:
    """Every line of the run's log, waiting for more until the run ends (see :class:`Watch`)."""
    store, run_id, after = watch.store, watch.run_id, "0-0"
    while True:
        after, lines = store.read_log(run_id, after, block=watch.remaining(poll))
        yield from lines
        record = store.get(run_id)
        if record.get("state") in TERMINAL:
            while True:  # (what came between the last read and the end)
                after, lines = store.read_log(run_id, after)
                if not lines:
                    return
                yield from lines
        watch.check(record)


def wait(watch: Watch, poll: float = 0.5) -> dict[str, Any]:
    """The run's record once it ended (see :class:`Watch`)."""
    while True:
        record = watch.store.get(watch.run_id)
        if record.get("state") in TERMINAL:
            return record
        watch.check(record)
        time.sleep(watch.remaining(poll))
