"""Messages a worker took but whose runs it never started, handed back when the worker is dead.

With the Redis transport a message a worker took stays in kombu's ``unacked`` hash until the
worker acknowledges it (late acks: when the run ends) or the broker's visibility timeout passes
(6 h, see :mod:`.defaults`). The sweep finds a dead worker's *started* runs by their expired claims
(:mod:`.sweep`), but a worker that dies after taking a run's message and before claiming it
leaves the run ``queued``, on no worker's list: it would wait out the visibility timeout.

So each worker's main process notes, as it receives a run, the message's delivery tag in
``{p}:worker:{name}:reserved`` (run id -> tag), and rewrites that hash with every heartbeat from
Celery's own set of the requests it holds. When the worker's heartbeat expired, the sweep hands
back each message there whose run is still ``queued`` and unclaimed: kombu's own restore moves it
from ``unacked`` to the front of its queue, where any worker takes it. A run that was claimed
meanwhile is left alone (its claim tells the rest); should the dead worker come back, its copy
of the message is dropped by the claim as any second delivery is.

RabbitMQ needs none of this: it gives a consumer's unacknowledged messages back as soon as its
connection closes, so a worker on it notes nothing (see :func:`kombu_restore`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from . import state
from .dispatch import RUN_TASK
from .keys import Keys

logger = logging.getLogger(__name__)

#: restore(tag): put the message with this delivery tag back on its queue, out of ``unacked``
Restore = Callable[[str], None]


class Reservations:
    """The hashes ``worker:{name}:reserved``: run id -> delivery tag of a message it took."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.r, self.keys = client, keys

    def add(self, worker: str, run_id: str, tag: str) -> None:
        """Note that ``worker`` took the message ``tag`` of ``run_id``."""
        self.r.hset(self.keys.worker_reserved(worker), run_id, tag)

    def replace(self, worker: str, held: Mapping[str, str]) -> None:
        """Make ``held`` (run id -> tag) the worker's whole list."""
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self.keys.worker_reserved(worker))
        if held:
            pipe.hset(self.keys.worker_reserved(worker), mapping=dict(held))
        pipe.execute()

    def hand_back(self, worker: str, restore: Restore) -> list[str]:
        """For a dead ``worker``: restore the messages of its runs that are still queued and
        unclaimed; forget those whose runs went on; returns the run ids restored."""
        held: dict[str, str] = self.r.hgetall(self.keys.worker_reserved(worker))
        restored = []
        for run_id, tag in held.items():
            pipe = self.r.pipeline(transaction=False)
            pipe.hget(self.keys.run(run_id), "state")
            pipe.exists(self.keys.claim(run_id))
            run_state, claimed = pipe.execute()
            if run_state == state.QUEUED and claimed:
                continue  # claimed, not yet started: its claim expires and it is looked at again
            if run_state == state.QUEUED:
                restore(tag)
                restored.append(run_id)
                logger.warning("run %s: worker %s died holding its message; sent on", run_id,
                               worker)  # fmt: skip
            self.r.hdel(self.keys.worker_reserved(worker), run_id)
        return restored


def held_runs() -> dict[str, str]:
    """In a worker's main process: run id -> delivery tag of every run message it holds now."""
    from celery.worker import state as worker_state

    held = {}
    for request in list(worker_state.reserved_requests):
        tag = getattr(request.message, "delivery_tag", None)
        if request.type == RUN_TASK and tag is not None:  # (its name is the shadow name)
            held[request.id] = str(tag)
    return held


def kombu_restore(app: Any) -> Restore | None:
    """A :data:`Restore` through ``app``'s broker when it is Redis, else None (RabbitMQ gives a
    closed connection's messages back itself)."""
    with app.connection_for_write() as conn:
        if conn.transport.driver_type != "redis":
            return None

    def restore(tag: str) -> None:
        with app.connection_for_write() as conn:
            conn.default_channel.qos.restore_by_tag(tag, leftmost=False)  # (the consuming end)

    return restore
