"""A delivery at the fair-order gate (:mod:`.fairorder`): admitted, or parked off the broker.

Called by :class:`.pipeline.Job` once the delivery holds the run's claim, and with each run's
end write (a slot is free: the parked run whose turn it is goes, :class:`EndWake`). The gate
failing (Redis away) never holds a run back: it is admitted, as it was before fair order existed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import GpuUnavailable
from .fairorder import Asking, send_again
from .gpus import WorkerGpus
from .spec import TaskSpec

if TYPE_CHECKING:
    from .context import WorkerContext
    from .pipeline import Job

logger = logging.getLogger(__name__)

#: the user a run without one (sent before runs had users) counts for
NOBODY = "-"


class Parked(Exception):
    """The run waits off the broker (at a quota, or for another user's turn): this delivery ends
    without a result; the run is sent again when it may start."""


def asking(job: Job, spec: TaskSpec) -> Asking | None:
    """The question ``job``'s delivery asks the gate, to ride on its claim's round trip (None
    when fair order is off)."""
    fair = job.ctx.fair
    if fair is None:
        return None
    return fair.asking(job.run_id, spec.queue, *_who(job, spec), job.token)


def admit(
    job: Job, spec: TaskSpec, record: dict[str, Any], asked: Asking | None = None
) -> GpuUnavailable | None:
    """Let the delivery of ``job`` (holding the claim) go on, or raise :class:`Parked` with the
    reason, recorded on the run as ``waiting``; returns the error of a run that wants more GPUs
    than a quota ever allows (it must fail). The gate's answer comes from ``asked`` when it
    answered on the claim's round trip, else from a round trip of its own."""
    ctx = job.ctx
    if ctx.fair is None:
        return None
    queue = str(record.get("queue") or spec.queue)
    try:
        verdict = asked.verdict() if asked is not None else None
        if verdict is None:
            verdict = ctx.fair.gate(job.run_id, queue, *_who(job, spec), job.token)
    except GpuUnavailable as never:
        return never
    except Exception as err:  # never hold a run back because the gate failed
        logger.warning("run %s: fair-order gate failed (%s); admitting it", job.run_id, err)
        return None
    if verdict.resend is not None:
        _send(ctx, [(queue, *verdict.resend)])
    if not verdict.admitted:
        raise Parked(f"run {job.run_id} waits: {verdict.reason}")
    return None


def _who(job: Job, spec: TaskSpec) -> tuple[str, str, int, int]:
    """The gate's view of the run: user, project, priority (a bump past the limit: none) and
    the GPUs it holds on this worker."""
    priority = min(spec.priority, job.ctx.settings.max_priority)
    return spec.user or NOBODY, spec.project or "", priority, gpu_count(job.ctx.gpus, spec.gpus)


class EndWake:
    """The wake that rides on a run's end write (a slot is free: the parked run whose turn it
    is goes now), so a run's end costs no round trip more."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.queued = False

    def build(self, inner: Callable[[Any], None]) -> Callable[[Any], None]:
        """``inner`` (what the end write queues), then the wake, last."""

        def build(pipe: Any) -> None:
            inner(pipe)
            self.queued = self.ctx.fair is not None and self.ctx.resend is not None
            if self.ctx.fair is not None and self.queued:
                self.ctx.fair.wake_on(pipe)

        return build

    def sent(self, results: list[Any]) -> None:
        """Send again what the wake found (in ``results``, the end write's); never raises."""
        if not (self.queued and results and self.ctx.fair is not None):
            return
        try:
            _send(self.ctx, self.ctx.fair.woken(results[-1]))
        except Exception as err:  # the sweep wakes them too
            logger.warning("could not wake parked runs: %s", err)


def _send(ctx: WorkerContext, items: list[tuple[str, str, str]]) -> list[str]:
    if ctx.fair is None or ctx.resend is None or not items:
        return []
    return send_again(ctx.fair, ctx.resend, items)


def gpu_count(gpus: WorkerGpus, wanted: int | str | None) -> int:
    """How many GPUs a run asking ``wanted`` holds on a worker with ``gpus`` (0 when it can
    never get them: its start fails with why)."""
    try:
        got = gpus.request(wanted)
    except GpuUnavailable:
        return 0
    return got if isinstance(got, int) else len(got)
