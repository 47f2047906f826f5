"""Queue depth on a RabbitMQ (AMQP) broker, for the exporter.

One passive ``queue.declare`` per queue on one channel, kept open between scrapes: the broker
answers with the queue's ready message count without changing anything (a passive declare never
creates a queue, and ignores its arguments, so the ``x-max-priority`` queues celery-agent declares
are read as they are). A queue the broker does not have is 0 deep: its 404 closes the channel, and
the next queue gets a new one. The messages of runs in flight are unacknowledged, not ready: the
exporter counts those runs as active instead.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger(__name__)


class AmqpDepth:
    """The ready-message count of queues on the broker at ``url`` (``amqp://``, ``pyamqp://``)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url, self.timeout = url, timeout
        self._conn: Any = None
        self._channel: Any = None
        self._lock = threading.Lock()  # one channel: scrapes of two HTTP threads take turns

    def depth(self, queues: Iterable[str]) -> dict[str, int]:
        """Queue -> messages waiting in it; raises when the broker cannot be reached (the
        connection is then dropped and made again on the next call)."""
        with self._lock:
            try:
                return {queue: self._count(queue) for queue in queues}
            except Exception:
                self.close()
                raise

    def _count(self, queue: str) -> int:
        from amqp.exceptions import NotFound

        try:
            _, messages, _ = self._open().queue_declare(queue=queue, passive=True)
        except NotFound:  # no such queue (yet): nothing waits in it; the 404 closed the channel
            self._channel = None
            return 0
        return int(messages)

    def _open(self) -> Any:
        if self._conn is None:
            from kombu import Connection

            self._conn = Connection(self.url, connect_timeout=self.timeout)
            self._conn.connect()
        if self._channel is None:
            self._channel = self._conn.channel()
        return self._channel

    def close(self) -> None:
        """Drop the connection (made again on the next :meth:`depth`)."""
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            try:
                conn.release()
            except Exception as exc:  # already broken: nothing more to release
                logger.debug("closing the broker connection: %s", exc)
