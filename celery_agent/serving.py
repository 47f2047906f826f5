"""Who serves a queue: the online workers of the registry, looked at before a run is sent and
while a submitter waits for it, so that a run on a queue nobody serves is said at once."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import AgentError
from .workers import ONLINE, WorkerRegistry


class NoWorkerWarning(UserWarning):
    """A run was sent to a queue that no online worker serves (it waits until one does)."""


class NoWorkerError(AgentError):
    """No online worker serves the queue, and the submitter asked for one (``require_worker``)."""

    stage = "submit"


@dataclass(frozen=True)
class QueueCover:
    """The online workers of one queue, and every queue the online workers serve."""

    queue: str
    workers: list[str] = field(default_factory=list)
    #: queue -> its online workers, for every queue served now
    served: dict[str, list[str]] = field(default_factory=dict)

    @property
    def covered(self) -> bool:
        """Whether at least one online worker serves the queue."""
        return bool(self.workers)

    def problem(self) -> str:
        """'no online worker serves queue X; ...' naming the queues that are served."""
        if not self.served:
            return f"no online worker serves queue {self.queue!r}: no worker is online at all"
        queues = ", ".join(f"{q} ({', '.join(ws)})" for q, ws in sorted(self.served.items()))
        return f"no online worker serves queue {self.queue!r}; queues served now: {queues}"

    def hint(self) -> str:
        """How to get the run going."""
        return (
            f"start a worker on it (`celery -A celery_agent worker -Q {self.queue}`), "
            "or submit to a served queue with --queue"
        )

    def error(self) -> NoWorkerError:
        """The error ``require_worker`` raises."""
        return NoWorkerError(self.problem(), self.hint())


def queue_cover(registry: WorkerRegistry, queue: str) -> QueueCover:
    """Which online workers serve ``queue`` now (from their heartbeats, one Redis round trip
    per worker list)."""
    served: dict[str, list[str]] = {}
    for row in registry.overview():
        if row.get("state") != ONLINE:
            continue
        for name in row.get("queues") or []:
            served.setdefault(str(name), []).append(str(row["name"]))
    return QueueCover(queue, served.get(queue, []), served)
