"""Why a running run should stop: a cancel (pub/sub nudge or flag), its worker draining, or its
claim lost to another runner (this process stalled past the claim's TTL).

The runner asks :meth:`StopWatch.__call__` every few milliseconds. The process's
:class:`~celery_agent.keeper.Keeper` listens on the abort channel, so a cancel is seen at once; the
flags in Redis are read every ``poll`` seconds as the backstop (a missed message, a Redis restart)
and for a drain.
"""

from __future__ import annotations

import time

from .keeper import Held

CHECK_EVERY = 0.02  #: seconds between the runner's looks at the stop watch


class StopWatch:
    """A callable: True once the run should stop; ``reason`` says why ('cancel', 'drain' or
    'lost')."""

    def __init__(self, held: Held, worker: str, poll: float) -> None:
        self.held, self.worker, self.poll = held, worker, poll
        self.reason: str | None = None
        self._next = time.monotonic() + poll  # the delivery read both flags as it started

    def __call__(self) -> bool:
        """Whether the run should stop now."""
        if self.held.lost_to is not None:
            self.reason = "lost"
        if self.reason is None and self.held.cancel_heard:
            self.reason = "cancel"
        now = time.monotonic()
        if self.reason is None and now >= self._next:
            self._next = now + self.poll
            self.reason = self.held.store.stop_reason(self.held.run_id, self.worker)
        return self.reason is not None
