"""Why a running run should stop: a cancel (pub/sub nudge or flag) or its worker draining.

The runner asks :meth:`StopWatch.__call__` every few milliseconds. A thread listens on the abort
channel, so a cancel is seen at once; the flags in Redis are read every ``poll`` seconds as the
backstop (a missed message, a Redis restart).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .state import RunStore

logger = logging.getLogger(__name__)

CHECK_EVERY = 0.02  #: seconds between the runner's looks at the stop watch


class StopWatch:
    """A callable: True once the run should stop; ``reason`` says why ('cancel' or 'drain')."""

    def __init__(self, store: RunStore, run_id: str, worker: str, poll: float) -> None:
        self.store, self.run_id, self.worker, self.poll = store, run_id, worker, poll
        self.reason: str | None = None
        self._next = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="abort-listen", daemon=True)

    def __enter__(self) -> StopWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()  # the listener ends within its next wait; the run need not wait for it

    def __call__(self) -> bool:
        """Whether the run should stop now."""
        now = time.monotonic()
        if self.reason is None and now >= self._next:
            self._next = now + self.poll
            self.reason = self.store.stop_reason(self.run_id, self.worker)
        return self.reason is not None

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                self._subscribe_and_wait()
            except Exception as err:  # Redis away: the flag poll still works; try again later
                logger.debug("abort channel: %s", err)
                self._stop.wait(1.0)

    def _subscribe_and_wait(self) -> None:
        pubsub: Any = self.store.r.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.store.keys.abort_channel())
            while not self._stop.is_set() and self.reason is None:
                message = pubsub.get_message(timeout=0.2)
                if message and message.get("data") == self.run_id:
                    self.reason = "cancel"
        finally:
            pubsub.close()
