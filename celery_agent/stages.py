"""Helpers of the run pipeline's stages: time limits, the entry's command head, failure hints,
and recording the end of a run while Redis may be away."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import AgentError, SourceError, StageTimeout
from .runner import ProcessOutcome
from .settings import Settings
from .source import Checkout
from .spec import TaskSpec
from .state import RunStore

logger = logging.getLogger(__name__)


@dataclass
class StageClock:
    """The run's deadline (spec ``timeout``) and each stage's own limit (spec ``timeouts``)."""

    deadline: float | None = None
    limits: dict[str, float] = field(default_factory=dict)

    @classmethod
    def for_spec(
        cls, spec: TaskSpec, started: float, settings: Settings | None = None
    ) -> StageClock:
        """The clock of ``spec`` for a run that began at ``started`` (epoch seconds); a stage the
        spec gives no limit gets the worker's default (``source_timeout``, ``env_build_timeout``)."""
        deadline = started + spec.timeout if spec.timeout else None
        limits = {str(k): float(v) for k, v in spec.timeouts.items()}
        for stage, default in _defaults(settings).items():
            limits.setdefault(stage, default)
        return cls(deadline, limits)

    def remaining(self, stage: str) -> float | None:
        """Seconds ``stage`` may take: the least of the run's time left and the stage's own limit;
        raises StageTimeout when none are left."""
        limits = [self.limits[stage]] if stage in self.limits else []
        if self.deadline is not None:
            left = self.deadline - time.time()
            if left <= 0:
                raise stage_timeout(
                    f"{stage} stage timed out: the run's timeout passed before it began", stage
                )
            limits.append(left)
        return min(limits) if limits else None

    def check(self, stage: str, t0: float) -> None:
        """Raise StageTimeout when ``stage`` (begun at ``t0``) used up its time."""
        limit = self.remaining(stage)
        if limit is not None and time.time() - t0 >= limit - 0.05:
            raise stage_timeout(f"{stage} stage timed out after {time.time() - t0:.1f}s", stage)


def _defaults(settings: Settings | None) -> dict[str, float]:
    """The stage limits a worker's settings give (a stage with None has none)."""
    if settings is None:
        return {}
    given = {"source": settings.source_timeout, "env": settings.env_build_timeout}
    return {stage: float(seconds) for stage, seconds in given.items() if seconds}


def stage_timeout(message: str, stage: str) -> StageTimeout:
    """A StageTimeout that names its stage."""
    err = StageTimeout(message)
    err.stage = stage
    return err


def entry_head(spec: TaskSpec, co: Checkout) -> list[str]:
    """The interpreter arguments that name what to run: ['-m', module] or [script path].

    Raises :class:`SourceError` (stage source) when the script is not in the checkout."""
    if spec.module:
        return ["-m", spec.module]
    script = co.path / spec.entry
    if not script.is_file():
        in_workdir = f"{spec.workdir}/{spec.entry}" if spec.workdir else ""
        hint = (
            f"the entry is a path from the repository root, not from the workdir: give {in_workdir!r}"
            if in_workdir and (co.path / in_workdir).is_file()
            else "check the path (relative to the repository root) and that the file is committed or in the diff"
        )
        raise SourceError(
            f"entry {spec.entry!r} does not exist in {co.repo_url} at {co.commit[:12]}", hint
        )
    return [str(script)]


def stage_hint(outcome: ProcessOutcome) -> str:
    """A hint for a failed run: its last output line, where the reason usually is."""
    lines = [line for line in outcome.tail if line.strip()]
    return f"last line: {lines[-1][:300]}" if lines else "the run printed nothing"


#: the summary's first fields: what its short previews show (Celery's worker log and
#: task-succeeded event cut the result's repr at 256 characters; Flower's result column)
LEADS = ("run_id", "status", "exit_code", "error", "error_stage", "worker", "commit", "output_dir")


def leading(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` with the fields of :data:`LEADS` first (the rest in their order)."""
    return {k: summary[k] for k in LEADS if k in summary} | summary


def record_end(
    store: RunStore, run_id: str, status: str, fields: dict[str, Any], retry_for: float
) -> None:
    """Write a run's final state, retrying with backoff for ``retry_for`` s while Redis is away."""
    with_retry(lambda: store.transition(run_id, status, force=True, **fields), run_id, retry_for)


def with_retry(write: Callable[[], object], run_id: str, retry_for: float) -> None:
    """Do a run's final write, retrying with backoff for ``retry_for`` s while Redis is away."""
    pause, give_up = 0.2, time.monotonic() + retry_for
    while True:
        try:
            write()
            return
        except AgentError as err:
            if time.monotonic() + pause > give_up:
                logger.error("could not record the end of run %s: %s", run_id, err)
                return
            logger.warning("recording the end of %s failed (%s); retrying", run_id, err)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)
