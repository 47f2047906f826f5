"""Who serves a queue: the online workers of the registry, looked at before a run is sent and
while a submitter waits for it, so that a run on a queue nobody serves is said at once."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .errors import AgentError
from .workers import WorkerRegistry


class NoWorkerWarning(UserWarning):
    """A run was sent to a queue that no online worker serves (it waits until one does)."""


class ArtifactStoreWarning(UserWarning):
    """The online workers of a run's queue say they cannot write to their artifact store: its
    outputs would stay on the worker's disk (``celery-agent status`` says why)."""


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
    #: worker of the queue -> why it cannot write to its artifact store (its last check)
    broken: dict[str, str] = field(default_factory=dict)

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

    def store_problem(self) -> str:
        """'worker W (queue Q) cannot keep outputs: reason', one per worker whose check failed."""
        return "; ".join(f"worker {name} (queue {self.queue!r}) cannot keep outputs: {why}"
                         for name, why in sorted(self.broken.items()))  # fmt: skip

    def error(self) -> NoWorkerError:
        """The error ``require_worker`` raises."""
        return NoWorkerError(self.problem(), self.hint())


def queue_cover(registry: WorkerRegistry, queue: str) -> QueueCover:
    """Which online workers serve ``queue`` now: the ``queues`` field of each live heartbeat
    (one small read per known worker, in one round trip; a heartbeat that expired is offline)."""
    names = registry.names()
    pipe = registry.r.pipeline(transaction=False)
    for name in names:
        pipe.hmget(registry.keys.worker(name), "queues", "artifact_store")
    served: dict[str, list[str]] = {}
    broken: dict[str, str] = {}
    for name, (raw, check) in zip(names, pipe.execute() if names else [], strict=True):
        for served_queue in (json.loads(raw) if raw else None) or []:
            served.setdefault(str(served_queue), []).append(str(name))
        why = (json.loads(check) or {}).get("error") if check else None
        if why and str(name) in served.get(queue, []):
            broken[str(name)] = str(why)
    return QueueCover(queue, served.get(queue, []), served, broken)
