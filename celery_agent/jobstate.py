"""The state one run's :class:`~.pipeline.Job` carries through its stages on this worker (its
folders, summary, claim, stop check and notes) and the small acts every stage uses: a note in the
run's log, a field deferred to the run's next write, a stage's timing, the stop check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from . import attempts, envstats
from .context import ResultWrites, WorkerContext
from .errors import Cancelled
from .keeper import Held
from .monitoring.gpu import GpuDevice
from .notes import RunNotes
from .source import Checkout
from .stages import StageClock

logger = logging.getLogger(__name__)
TAG = "[celery-agent]"


class Drained(Exception):
    """The worker drains: the run stops and goes back to its queue."""


class JobState:
    """One run on this worker as its job holds it; :class:`~.pipeline.Job` runs the stages."""

    def __init__(
        self, run_id: str, ctx: WorkerContext, results: ResultWrites | None = None
    ) -> None:
        self.run_id, self.ctx, self.store = run_id, ctx, ctx.store
        #: the Celery task's results, carried by the run's start and end writes when its result
        #: backend is the state store's Redis (see :mod:`.tasks`)
        self.results = results
        self.run_dir = ctx.settings.runs_dir / run_id
        self.output_dir = self.run_dir / "output"
        self.log_file = self.run_dir / "log.txt"
        self.started = time.time()
        self.clock = StageClock()
        self.checkout: Checkout | None = None
        self.want: list[GpuDevice] | int = []
        self.gpu_usage: dict[str, Any] = {}
        self.summary: dict[str, Any] = {  # (the status leads in every short view of it)
            "run_id": run_id,
            "status": None,
            "worker": ctx.worker,
            "timings": {},
        }
        self.token = attempts.holder_token(ctx.worker)
        self.held: Held | None = None  #: set once the run is claimed
        self.stops: Callable[[], bool] = lambda: False
        self.stop_reason: Callable[[], str | None] = lambda: None
        self.notes = RunNotes(self.log_file)  #: the agent's lines in the run's log file
        self.exclude: list[str] = []  #: output files not kept (the spec's output_exclude)
        self.input_env: dict[str, str] = {}  #: the run's variables naming its inputs
        self.attempt = 1  #: this delivery's attempt at the run (1, 2, ...), set by begin
        self._cleaned = False

    # -- what every stage uses ------------------------------------------------------------------
    def note(self, text: str) -> None:
        """A line from the agent itself, for the run's log file (:mod:`.notes`) and its log
        stream with the next write (:mod:`.keeper`). The worker's own log has it at DEBUG."""
        line = f"{TAG} {text}"
        logger.debug("%s: %s", self.run_id, text)
        if self.held is not None:
            self.held.defer([line])
        else:
            try:
                self.store.append_log(self.run_id, [line])
            except Exception as err:
                logger.warning("could not write to the log of %s: %s", self.run_id, err)
        self.notes.write(line)

    def _defer(self, **fields: Any) -> None:
        """Record fields that go out with the run's next write (only while the run is held)."""
        assert self.held is not None
        self.held.defer(**fields)

    def count_env(self, kind: str, outcome: str, seconds: float) -> None:
        """Count an env cache outcome (:mod:`.envstats`) with the run's next write."""
        if self.held is not None:
            keys = self.store.keys
            self.held.defer_write(lambda pipe: envstats.count(pipe, keys, kind, outcome, seconds))

    def timing(self, stage: str, t0: float) -> None:
        """Record how long a stage took."""
        self.summary["timings"][stage] = round(time.time() - t0, 3)

    def check_abort(self) -> None:
        """Raise Cancelled when someone asked to cancel the run, Drained when its worker drains."""
        if self.stops():
            attempts.stop_if_lost(self.run_id, self.stop_reason())
            if self.stop_reason() == "drain":
                raise Drained()
            raise Cancelled("cancelled while preparing")
