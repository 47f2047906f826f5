"""A delivery at the fair-order gate (:mod:`.fairorder`): admitted, or parked off the broker.

Called by :class:`.pipeline.Job` once the delivery holds the run's claim, and after each run's end
write (a slot is free: the parked run whose turn it is goes). The gate failing (Redis away) never
holds a run back: it is admitted, as it was before fair order existed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .errors import GpuUnavailable
from .fairorder import send_again
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


def admit(job: Job, spec: TaskSpec, record: dict[str, Any]) -> GpuUnavailable | None:
    """Let the delivery of ``job`` (holding the claim) go on, or raise :class:`Parked` with the
    reason, recorded on the run as ``waiting``; returns the error of a run that wants more GPUs
    than a quota ever allows (it must fail)."""
    ctx = job.ctx
    if ctx.fair is None:
        return None
    queue = str(record.get("queue") or spec.queue)
    priority = min(spec.priority, ctx.settings.max_priority)  # (a bump past the limit: none)
    try:
        verdict = ctx.fair.gate(job.run_id, queue, spec.user or NOBODY, spec.project or "",
                                priority, gpu_count(ctx.gpus, spec.gpus), job.token)  # fmt: skip
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


def wake(ctx: WorkerContext, batch: int = 1) -> list[str]:
    """Send again the parked runs that may go now (up to ``batch`` per queue); their ids."""
    if ctx.fair is None or ctx.resend is None:
        return []
    try:
        return _send(ctx, ctx.fair.wake(batch))
    except Exception as err:  # the sweep wakes them too
        logger.warning("could not wake parked runs: %s", err)
        return []


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
