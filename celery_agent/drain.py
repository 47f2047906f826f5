"""Graceful drain: a worker told to stop lets its runs finish for ``drain_grace`` seconds, then
stops them and puts them back on their queues.

Celery's warm shutdown (SIGTERM) stops taking new messages and waits for running tasks without
limit. On the first SIGTERM a timer starts; when it runs out the worker's drain flag is set in Redis
(``worker:{name}:drain``), and every run of the worker sees it within its abort poll, stops its
process tree and requeues itself (same run id, not counted as a lost attempt). A second SIGTERM, or
a cold shutdown (SIGQUIT), sets the flag at once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_shutting_down

from .state import RunStore

logger = logging.getLogger(__name__)

FLAG_TTL = 3600  #: seconds a drain flag lives (a worker that starts again clears it sooner)


class Drain:
    """The drain of one worker: the grace timer and the flag."""

    def __init__(self, store: RunStore, worker: str, grace: float) -> None:
        self.store, self.worker, self.grace = store, worker, grace
        self.timer: threading.Timer | None = None

    def reset(self) -> None:
        """Clear a flag a predecessor of the same name left (call at worker start)."""
        self.store.r.delete(self.store.keys.worker_drain(self.worker))

    def on_signal(self, how: str) -> None:
        """React to a shutdown request: start the grace on the first warm one, else flag now.
        (Runs in a signal handler: it only starts a timer; the timer thread does the rest.)"""
        first = how == "Warm" and self.timer is None
        if self.timer is not None:
            self.timer.cancel()
        self.timer = threading.Timer(self.grace if first else 0.0, self.flag)
        self.timer.daemon = True
        self.timer.start()
        threading.Thread(target=_announce, args=(first, self.grace), daemon=True).start()

    def flag(self) -> None:
        """Tell the worker's runs to stop and requeue."""
        try:
            self.store.r.set(self.store.keys.worker_drain(self.worker), "1", ex=FLAG_TTL)
        except Exception as err:
            logger.error("could not set the drain flag: %s", err)


def _announce(first: bool, grace: float) -> None:
    if first:
        logger.warning("draining: runs get %.0fs to finish, then go back to their queues", grace)
    else:
        logger.warning("stopping runs now; they go back to their queues")


_drains: dict[str, Drain] = {}


def install(drain: Drain) -> None:
    """Make ``drain`` react to this worker's shutdown signals."""
    _drains[drain.worker] = drain
    worker_shutting_down.connect(_on_shutting_down, weak=False)


def _on_shutting_down(sender: Any = None, how: str = "", **kw: Any) -> None:
    drain = _drains.get(str(sender))
    if drain is not None:
        drain.on_signal(how)
