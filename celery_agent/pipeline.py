"""One run on a worker: claim -> materialize source -> prepare env -> execute -> collect.

Plain code with no Celery in it: the Celery task hands it a run id and a spec and gets back a JSON
summary. Every failure ends as an outcome (status + error), never as an exception, except a
duplicate delivery of a run another worker holds or that already ended (:class:`DuplicateRun`) and
a run that went back to its queue (:class:`Requeued`: its worker drained, or it took over a run
whose runner died with attempts left).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from typing import Any

from . import (
    artifacts,
    attempts,
    digests,
    fairgate,
    launch,
    paramusage,
    stages,
    staging,
    state,
    uploads,
)
from .attempts import DuplicateRun
from .context import ResultWrites, WorkerContext
from .errors import AgentError, Cancelled, RunLost, SpecError, StageTimeout, UnknownRunError
from .executors import get_executor
from .executors.base import PreparedEnv
from .fairgate import Parked
from .jobstate import Drained, JobState
from .runner import ProcessOutcome
from .source import Checkout
from .spec import TaskSpec
from .stages import StageClock, entry_head, record_end, stage_hint, stage_timeout, with_retry
from .stopwatch import StopWatch

logger = logging.getLogger(__name__)

__all__ = ["DuplicateRun", "Job", "Parked", "Requeued", "WorkerContext", "entry_head", "execute"]


class Requeued(Exception):
    """The run went back to its queue (and was sent again): this delivery ends without a result."""


def execute(
    run_id: str, raw_spec: Any, ctx: WorkerContext, results: ResultWrites | None = None
) -> dict[str, Any]:
    """Run one experiment to its end and return its summary (see :class:`Job`)."""
    return Job(run_id, ctx, results).run(raw_spec)


class Job(JobState):
    """The life of one run on this worker: the algorithm over its :class:`.jobstate.JobState`."""

    # -- the algorithm --------------------------------------------------------------------------
    def run(self, raw_spec: Any) -> dict[str, Any]:
        """Claim, run and record the run; returns the summary the Celery result carries."""
        try:
            spec = TaskSpec.parse(raw_spec)
        except SpecError as err:
            return self.finish(state.FAILED, error=err)
        s = self.ctx.settings
        asking = fairgate.asking(self, spec)  # (the gate rides on the claim's round trip)
        admission = attempts.admit(
            self.store, self.run_id, self.token, s.claim_ttl, self.ctx.worker, asking
        )
        if not admission.claimed:
            return self.finish(state.ABORTED, error=Cancelled("cancelled before it started"))
        refused = fairgate.admit(self, spec, admission.record, asking)  # or Parked: it waits
        if refused is not None:  # more GPUs than a quota ever allows
            return self.finish(state.FAILED, error=refused)
        held = self.held = self.ctx.keeper.hold(self.run_id, self.token, s.claim_ttl)
        watch = StopWatch(held, self.ctx.worker, s.abort_poll)
        self.stops, self.stop_reason = watch, lambda: watch.reason
        watch.reason = "cancel" if admission.cancelled else "drain" if admission.draining else None
        try:
            summary = self._claimed(spec, admission.record)
        except Exception:
            self._let_go()
            raise
        finally:  # (a BaseException - the pool process told to exit, e.g. revoke(terminate=True) -
            # leaves the run listed and its claim to expire: the sweep then ends or requeues it)
            self.ctx.keeper.drop(held)
        if summary["status"] == state.QUEUED:  # sent again only now that the claim is free
            self.ctx.resend(self.run_id, spec.to_json(), spec.queue)
            raise Requeued(f"run {self.run_id} went back to queue {spec.queue}")
        return summary

    def _claimed(self, spec: TaskSpec, record: dict[str, Any]) -> dict[str, Any]:
        self.clock = StageClock.for_spec(spec, self.started, self.ctx.settings)
        try:
            if self.stop_reason() == "cancel":
                if record.get("state") in state.ACTIVE:  # its last runner died
                    attempts.kill_leftovers(self.run_id)
                raise Cancelled("cancelled before it started")
            self.begin(spec, record)
            self.checkout = self.materialize(spec)
            entry_head(spec, self.checkout)  # a missing entry fails now, before the env is built
            self.input_env = staging.fetch_inputs(self, spec)
            prepared = self.prepare(spec, self.checkout)
            outcome = self.execute(spec, self.checkout, prepared)
            return self.collect(outcome, spec)
        except StageTimeout as err:
            return self.finish(state.TIMED_OUT, error=err)
        except Cancelled as err:
            return self.finish(state.ABORTED, error=err)
        except RunLost as err:
            return self.finish(state.LOST, error=err)
        except Drained:
            return self.requeue(f"worker {self.ctx.worker} drained")
        except AgentError as err:
            return self.finish(state.FAILED, error=err)
        except DuplicateRun:  # it ended (or was cancelled) between the claim and the start
            raise
        except Exception as err:  # a bug must not take the worker down or leave the run hanging
            logger.exception("run %s failed inside the agent", self.run_id)
            return self.finish(state.FAILED, error=AgentError(f"internal error: {err!r}"))
        finally:
            self.cleanup()

    # -- stages ---------------------------------------------------------------------------------
    def begin(self, spec: TaskSpec, record: dict[str, Any]) -> None:
        """Record that the run started here (one round trip), and make its folders."""
        if not record:
            raise UnknownRunError(f"no run {self.run_id!r} is recorded", "submit it again")
        self.run_dir.mkdir(parents=True, exist_ok=True)  # (then output/: no failed mkdir first)
        self.output_dir.mkdir(exist_ok=True)
        if record.get("state") in state.ACTIVE:  # its last runner died
            attempts.kill_leftovers(self.run_id)
        lost = attempts.count_lost(self.store, self.run_id, record)
        if lost >= spec.max_attempts:
            raise RunLost(f"its runner died {lost} time(s); max_attempts is {spec.max_attempts}")
        attempt = self.attempt = int(record.get("attempt") or 0) + 1
        if attempt > 1:  # an earlier attempt here may have left its worktree
            shutil.rmtree(self.run_dir / "src", ignore_errors=True)
        held = self.held
        assert held is not None
        fields: dict[str, Any] = {
            "worker": self.ctx.worker,
            "attempt": attempt,
            "run_dir": str(self.run_dir),
            "output_dir": str(self.output_dir),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }

        def start(pipe: Any) -> None:
            self.store.transition(self.run_id, state.PREPARING, pipe=pipe, **fields)
            self.ctx.registry.add_run(self.ctx.worker, self.run_id, pipe=pipe)
            if self.results is not None:
                self.results.started(pipe)

        # Not deferred: from here the run must be in its worker's list and active, so that the
        # sweep finds it should this worker die (a queued run off every list would wait for the
        # broker's visibility timeout).
        old = held.write(start)[0]
        if old in state.TERMINAL:
            raise DuplicateRun(f"run {self.run_id} already ended as {old}")
        self.note(f"run {self.run_id} on {self.ctx.worker} (attempt {attempt})")
        self.exclude = spec.output_exclude
        self.want = self.ctx.gpus.request(spec.gpus)  # a request it can never meet fails now

    def materialize(self, spec: TaskSpec) -> Checkout:
        """Check out the code at the commit and apply the diff."""
        t0 = time.time()
        co = self.ctx.sources.checkout(
            spec.repo,
            self.run_dir / "src" if self.ctx.settings.keep_source else None,
            commit=spec.commit, branch=spec.branch, diff=spec.diff,
            timeout=self.clock.remaining("source"),
            stop=self.check_abort,  # a cancel ends a stalled fetch or lock wait within 0.1 s
        )  # fmt: skip
        self.timing("source", t0)
        self.clock.check("source", t0)
        self._defer(commit=co.commit)
        self.summary["commit"] = co.commit
        self.note(
            f"source {co.repo_url} @ {co.commit[:12]}"
            + (" + diff" if co.diff_applied else "")
            + (" (worktree reused)" if co.reused else "")
        )
        self.check_abort()
        return co

    def prepare(self, spec: TaskSpec, co: Checkout) -> PreparedEnv:
        """Reuse or build the run's environment."""
        t0 = time.time()
        settings = self.ctx.executor_settings.within(
            self.clock.remaining("env"), self.stops, self.count_env
        )
        executor = get_executor(spec.executor, settings)
        try:
            prepared = executor.prepare(spec, co.path, self.note)
        except AgentError as err:
            self.check_abort()  # (a build ended by a drain goes back to the queue)
            self.clock.check("env", t0)
            err.stage = err.stage or ("env" if isinstance(err, StageTimeout) else "")
            raise
        self.timing("env", t0)  # (the executor's own lines say what it reused or built)
        self._defer(**prepared.record())
        self.check_abort()
        return prepared

    def execute(self, spec: TaskSpec, co: Checkout, prepared: PreparedEnv) -> ProcessOutcome:
        """Take the run's GPUs (leased on a dynamic worker), then run it on them (:mod:`.launch`)."""
        return launch.run_on_gpus(self, spec, co, prepared)

    def collect(self, outcome: ProcessOutcome, spec: TaskSpec) -> dict[str, Any]:
        """Record the outcome: status, exit code, resolved and unused params, usage, log tail."""
        strict = paramusage.record(spec, self.run_dir / "params.json", self.summary, self.note)
        cpu, rss = outcome.usage.cpu_seconds, outcome.usage.max_rss_bytes
        self.summary["usage"] = {"cpu_seconds": cpu, "max_rss_bytes": rss} | self.gpu_usage
        self.summary["log_tail"] = outcome.tail
        self.summary["log_lines"] = outcome.lines
        error = None
        status: str = outcome.status
        if outcome.status == state.ABORTED and self.stop_reason() == "drain":
            return self.requeue(f"worker {self.ctx.worker} drained while it ran")
        attempts.stop_if_lost(self.run_id, self.stop_reason())
        if outcome.status == state.FAILED:
            error = AgentError(f"the run exited with code {outcome.exit_code}", stage_hint(outcome))
        elif outcome.status == state.TIMED_OUT:
            error = stage_timeout(f"run stage timed out: {outcome.reason}", "run")
        elif outcome.status == state.ABORTED:
            error = Cancelled("cancelled while running")
        elif strict is not None:  # it succeeded, but left parameters unused
            error, status = strict, state.FAILED
        return self.finish(status, exit_code=outcome.exit_code, error=error, stage="run")

    def finish(
        self,
        status: str,
        *,
        exit_code: int | None = None,
        error: AgentError | None = None,
        stage: str = "",
    ) -> dict[str, Any]:
        """Keep the run's outputs (:mod:`.artifacts`), write the terminal state, return the summary."""
        self._stop_if_superseded()
        going, s = None, self.ctx.settings  # (an upload longer than artifact_wait goes on)
        if self.output_dir.is_dir():  # every run that began keeps its outputs, however it ended
            kept, going = uploads.keep(s, self.run_id, self.run_dir, self.exclude, self.store)
            self.summary["artifacts"] = kept
            if line := artifacts.describe(kept):
                self.note(line)
        self.summary["timings"]["total"] = round(time.time() - self.started, 3)
        self.summary |= {
            "status": status,
            "exit_code": exit_code,
            "output_dir": str(self.output_dir),
        }
        if error is not None:
            self.summary["error"] = str(error)
            self.summary["error_stage"] = error.stage or stage
            self.note(f"{status}: {error}")
        self.summary = stages.leading(self.summary)  # (what short previews show first)
        fields = {k: v for k, v in self.summary.items() if k not in ("run_id", "status")}
        try:
            self._end(status, fields)
        finally:  # (the upload's outcome is recorded when it ends, whatever this write met)
            if going is not None:
                retry = self.ctx.settings.record_retry
                uploads.settle(self.store, self.run_id, self.log_file, going, retry)
        done = self.summary.get("artifacts")  # (hashed once the end is written; not waited for)
        digests.DIGESTS.start(self.store, self.run_id, self.output_dir, done, s.claim_ttl)
        return self.summary

    def requeue(self, why: str) -> dict[str, Any]:
        """Put the run back in its queue (state queued; sent again once the claim is released)."""
        self._stop_if_superseded()
        self.note(f"back to the queue: {why}")
        self.summary["status"] = state.QUEUED
        self._end(state.QUEUED, {"requeued_at": time.time(), "last_error": why})
        return self.summary

    def _stop_if_superseded(self) -> None:
        """Raise DuplicateRun when this attempt's claim went to another runner while it stalled:
        whatever this attempt saw end (its child killed by the new runner, say), it writes
        nothing, uploads nothing and leaves the Celery result to the runner that has the run."""
        if self.held is not None and self.held.lost_to is not None:
            raise DuplicateRun(f"run {self.run_id}: {self.held.lost_to} runs it now")

    def _end(self, status: str, fields: dict[str, Any]) -> None:
        """The last write of a delivery, in one round trip when it held the run: its deferred
        writes, the final state, the claim released, the run off the worker's list and the Celery
        result (retried while Redis is away). Its worktree and log file are let go of first: who
        sees the run ended may send the next one, and read the whole log."""
        self.cleanup()
        held = self.held
        if held is None:  # it never got the claim (a message that is not a spec)
            record_end(self.store, self.run_id, status, fields, self.ctx.settings.record_retry)
            return

        fields = dict(fields)  # (the deferred fields are folded into it)
        results = self.results if status != state.QUEUED else None  # (requeued: no result)

        def write(pipe: Any) -> None:
            self.store.transition(self.run_id, status, force=True, pipe=pipe, **fields)
            self._release(pipe)
            if results is not None:
                results.ended(pipe, self.summary)

        wake = fairgate.EndWake(self.ctx)  # (a slot is free: the parked run whose turn it is)
        with_retry(
            lambda: wake.sent(held.write(wake.build(write), end=fields)),
            self.run_id, self.ctx.settings.record_retry,
        )  # fmt: skip
        self.held = None  # released: nothing more to let go of

    def _let_go(self) -> None:
        """Release the claim of a delivery that ends without a final state (a duplicate, a bug)."""
        held, self.held = self.held, None
        if held is None:
            return
        try:
            held.write(self._release)
        except Exception as err:
            logger.warning("could not release the claim on %s: %s", self.run_id, err)

    def _release(self, pipe: Any) -> None:
        """Queue the claim's release and the run's removal from its worker's list on ``pipe``."""
        self.store.release_claim(self.run_id, self.token, pipe=pipe)
        self.ctx.registry.remove_run(self.ctx.worker, self.run_id, pipe=pipe)

    def cleanup(self) -> None:
        """Remove the worktree; keep the run folder (log, output, params). Once per delivery."""
        if self._cleaned:
            return
        self._cleaned = True
        self.notes.close()
        staging.release(self)
        if self.checkout is not None and not self.ctx.settings.keep_source:
            try:
                self.ctx.sources.remove(self.checkout)
            except Exception as err:  # never let cleanup hide the outcome
                logger.warning("could not remove the worktree of %s: %s", self.run_id, err)
        elif self.checkout is None:
            shutil.rmtree(self.run_dir / "src", ignore_errors=True)
