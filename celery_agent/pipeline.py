"""One run on a worker: claim -> materialize source -> prepare env -> execute -> collect.

Plain code with no Celery in it: the Celery task hands it a run id and a spec and gets back a JSON
summary. Every failure ends as an outcome (status + error), never as an exception, except a
duplicate delivery of a run another worker holds, which raises :class:`DuplicateRun`.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import leases as leases_mod
from . import params as params_mod
from . import runenv, state
from .errors import AgentError, Cancelled, RunError, SpecError, StageTimeout
from .executors import get_executor
from .executors.base import ExecutorSettings, PreparedEnv, RunRequest
from .gpus import DYNAMIC, WorkerGpus, gpu_ids, pin_env
from .monitoring.gpu import GpuDevice
from .monitoring.sampler import RunGpuSampler
from .runner import ProcessOutcome
from .settings import Settings
from .source import Checkout, SourceCache
from .spec import TaskSpec, quote_argv
from .state import RunStore
from .workers import WorkerRegistry

logger = logging.getLogger(__name__)
TAG = "[celery-agent]"


class DuplicateRun(Exception):
    """The run is already claimed by a live worker: this delivery must be dropped."""


@dataclass
class WorkerContext:
    """What a worker process needs to run jobs: settings, state store, caches, its name."""

    settings: Settings
    store: RunStore
    worker: str

    def __post_init__(self) -> None:
        self.sources = SourceCache(self.settings.git_cache)
        self.registry = WorkerRegistry(self.store.r, self.store.keys)
        self.gpus = WorkerGpus.from_env()  # published by the worker's main process
        self.leases = (
            leases_mod.GpuLeases(self.store.r, self.store.keys, socket.gethostname())
            if self.gpus.mode == DYNAMIC
            else None
        )
        self.executor_settings = ExecutorSettings(
            cache_root=self.settings.env_cache,
            installer=self.settings.installer,
            max_envs=self.settings.max_envs,
            max_env_bytes=int(self.settings.max_env_gb * 2**30)
            if self.settings.max_env_gb
            else None,
            failure_ttl=self.settings.env_failure_ttl,
            build_timeout=self.settings.env_build_timeout,
        )


def execute(run_id: str, raw_spec: Any, ctx: WorkerContext) -> dict[str, Any]:
    """Run one experiment to its end and return its summary (see :class:`Job`)."""
    return Job(run_id, ctx).run(raw_spec)


class Job:
    """The life of one run on this worker."""

    def __init__(self, run_id: str, ctx: WorkerContext) -> None:
        self.run_id, self.ctx, self.store = run_id, ctx, ctx.store
        self.run_dir = ctx.settings.runs_dir / run_id
        self.output_dir = self.run_dir / "output"
        self.log_file = self.run_dir / "log.txt"
        self.started = time.time()
        self.deadline: float | None = None
        self.checkout: Checkout | None = None
        self.want: list[GpuDevice] | int = []
        self.gpu_usage: dict[str, Any] = {}
        self.summary: dict[str, Any] = {"run_id": run_id, "worker": ctx.worker, "timings": {}}

    # -- the algorithm --------------------------------------------------------------------------
    def run(self, raw_spec: Any) -> dict[str, Any]:
        """Claim, run and record the run; returns the summary the Celery result carries."""
        try:
            spec = TaskSpec.parse(raw_spec)
        except SpecError as err:
            return self.finish(state.FAILED, error=err)
        if self.store.is_aborted(self.run_id):
            return self.finish(state.ABORTED, error=Cancelled("cancelled before it started"))
        holder = self.store.claim(self.run_id, self.ctx.worker, self.ctx.settings.claim_ttl)
        if holder is not None:
            raise DuplicateRun(f"run {self.run_id} is already held by {holder}")
        self.ctx.registry.add_run(self.ctx.worker, self.run_id)
        try:
            with state.ClaimKeeper(
                self.store, self.run_id, self.ctx.worker, self.ctx.settings.claim_ttl
            ):
                return self._claimed(spec)
        finally:
            self.ctx.registry.remove_run(self.ctx.worker, self.run_id)

    def _claimed(self, spec: TaskSpec) -> dict[str, Any]:
        self.deadline = self.started + spec.timeout if spec.timeout else None
        try:
            self.begin(spec)
            self.checkout = self.materialize(spec)
            prepared = self.prepare(spec, self.checkout)
            outcome = self.execute(spec, self.checkout, prepared)
            return self.collect(outcome)
        except StageTimeout as err:
            return self.finish(state.TIMED_OUT, error=err)
        except Cancelled as err:
            return self.finish(state.ABORTED, error=err)
        except AgentError as err:
            return self.finish(state.FAILED, error=err)
        except Exception as err:  # a bug must not take the worker down or leave the run hanging
            logger.exception("run %s failed inside the agent", self.run_id)
            return self.finish(state.FAILED, error=AgentError(f"internal error: {err!r}"))
        finally:
            self.cleanup()

    # -- stages ---------------------------------------------------------------------------------
    def begin(self, spec: TaskSpec) -> None:
        """Record that the run started here, and make its folders."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        attempt = int(self.store.get(self.run_id).get("attempt") or 0) + 1
        old = self.store.transition(
            self.run_id,
            state.PREPARING,
            worker=self.ctx.worker,
            attempt=attempt,
            run_dir=str(self.run_dir),
            output_dir=str(self.output_dir),
            pid=os.getpid(),
        )
        if old in state.TERMINAL:
            raise Cancelled(f"run already ended as {old}")
        self.note(f"run {self.run_id} on {self.ctx.worker} (attempt {attempt})")
        self.want = self.ctx.gpus.request(spec.gpus)  # a request it can never meet fails now

    def materialize(self, spec: TaskSpec) -> Checkout:
        """Check out the code at the commit and apply the diff."""
        t0 = time.time()
        co = self.ctx.sources.checkout(
            spec.repo,
            self.run_dir / "src",
            commit=spec.commit,
            branch=spec.branch,
            diff=spec.diff,
            timeout=self.remaining("source"),
        )
        self.timing("source", t0)
        self.store.update(self.run_id, commit=co.commit)
        self.summary["commit"] = co.commit
        self.note(
            f"source {co.repo_url} @ {co.commit[:12]}" + (" + diff" if co.diff_applied else "")
        )
        self.check_abort()
        return co

    def prepare(self, spec: TaskSpec, co: Checkout) -> PreparedEnv:
        """Reuse or build the run's environment."""
        t0 = time.time()
        executor = get_executor(spec.executor, self.ctx.executor_settings)
        prepared = executor.prepare(spec, self._workdir(spec, co), self.note)
        self.timing("env", t0)
        hit = "cache hit" if prepared.cache_hit else f"built with {prepared.installer}"
        self.note(f"environment {prepared.cache_key or '-'}: {hit} in {prepared.seconds:.2f}s")
        self.store.update(
            self.run_id,
            env_key=prepared.cache_key,
            env_hit=prepared.cache_hit,
            freeze=prepared.freeze,
        )
        self.check_abort()
        return prepared

    def execute(self, spec: TaskSpec, co: Checkout, prepared: PreparedEnv) -> ProcessOutcome:
        """Take the run's GPUs (leased on a dynamic worker), then run it on them."""
        s = self.ctx.settings
        wait = min(s.gpu_wait, self.remaining("gpu") or s.gpu_wait)
        with leases_mod.held(self.ctx.leases, self.ctx.gpus.devices, self.want, self.run_id,
                             ttl=s.gpu_lease_ttl, wait=wait,
                             should_abort=lambda: self.store.is_aborted(self.run_id)) as gpus:  # fmt: skip
            if self.ctx.gpus.mode != "unbound":
                self.store.update(self.run_id, gpus=gpu_ids(gpus))
                self.note(f"GPUs ({self.ctx.gpus.mode}): {', '.join(gpu_ids(gpus)) or 'none'}")
            with RunGpuSampler(s.gpu_sample_interval) as sampler:
                outcome = self.supervise(spec, co, prepared, gpus)
            self.gpu_usage = sampler.summary()
            return outcome

    def supervise(
        self, spec: TaskSpec, co: Checkout, prepared: PreparedEnv, gpus: list[GpuDevice]
    ) -> ProcessOutcome:
        """Run the entry under supervision on ``gpus``, its log streaming into Redis."""
        args, hook = params_mod.resolve(
            spec.args, spec.params, self.run_dir / "params.json", spec.env.get("PYTHONPATH")
        )
        executor = get_executor(spec.executor, self.ctx.executor_settings)
        interp_args = [*entry_head(spec, co), *args]
        argv = executor.command(prepared, interp_args)
        env = runenv.build(
            base=os.environ,
            spec_env=spec.env,
            agent=runenv.agent_vars(self.run_id, self.run_dir, self.output_dir, spec.queue) | hook,
            path_prefix=prepared.path_prefix,
            extra=prepared.env,
            threads=runenv.cpu_share(),
        ) | pin_env(self.ctx.gpus.mode, gpus)
        self.note(f"$ {quote_argv(argv)}")
        self.store.transition(self.run_id, state.RUNNING)
        request = RunRequest(
            env=env,
            cwd=self._workdir(spec, co),
            sink=lambda lines: self.store.append_log(self.run_id, lines),
            log_file=self.log_file,
            timeout=self.remaining("run"),
            grace=spec.grace if spec.grace is not None else self.ctx.settings.grace,
            should_abort=lambda: self.store.is_aborted(self.run_id),
            poll_interval=self.ctx.settings.abort_poll,
            source_dir=co.path,
            output_dir=self.output_dir,
            labels={"run_id": self.run_id, "worker": self.ctx.worker, "queue": spec.queue},
            gpus=gpu_ids(gpus),
        )
        t0 = time.time()
        outcome = executor.run(prepared, interp_args, request)
        self.timing("run", t0)
        if outcome.first_line_at:
            submitted = self.store.get(self.run_id).get("submitted_at") or self.started
            self.summary["timings"]["first_line"] = round(outcome.first_line_at - submitted, 3)
        return outcome

    def collect(self, outcome: ProcessOutcome) -> dict[str, Any]:
        """Record the outcome: status, exit code, resolved params, usage, log tail."""
        self.summary["params"] = params_mod.read_resolved(self.run_dir / "params.json") or {}
        self.summary["usage"] = {
            "cpu_seconds": outcome.usage.cpu_seconds,
            "max_rss_bytes": outcome.usage.max_rss_bytes,
        } | self.gpu_usage
        self.summary["log_tail"] = outcome.tail
        self.summary["log_lines"] = outcome.lines
        error = None
        if outcome.status == state.FAILED:
            error = AgentError(f"the run exited with code {outcome.exit_code}", stage_hint(outcome))
        elif outcome.status == state.TIMED_OUT:
            error = StageTimeout(f"run stage timed out: {outcome.reason}")
        elif outcome.status == state.ABORTED:
            error = Cancelled("cancelled while running")
        return self.finish(outcome.status, exit_code=outcome.exit_code, error=error, stage="run")

    def finish(
        self,
        status: str,
        *,
        exit_code: int | None = None,
        error: AgentError | None = None,
        stage: str = "",
    ) -> dict[str, Any]:
        """Write the terminal state and return the summary."""
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
        fields = {k: v for k, v in self.summary.items() if k not in ("run_id", "status")}
        try:
            self.store.transition(self.run_id, status, force=True, **fields)
        except AgentError as err:
            logger.error("could not record the end of run %s: %s", self.run_id, err)
        return self.summary

    def cleanup(self) -> None:
        """Remove the worktree; keep the run folder (log, output, params)."""
        if self.checkout is not None and not self.ctx.settings.keep_source:
            try:
                self.ctx.sources.remove(self.checkout)
            except Exception as err:  # never let cleanup hide the outcome
                logger.warning("could not remove the worktree of %s: %s", self.run_id, err)
        elif self.checkout is None:
            shutil.rmtree(self.run_dir / "src", ignore_errors=True)

    # -- helpers --------------------------------------------------------------------------------
    def note(self, text: str) -> None:
        """A line from the agent itself, in the run's log stream and log file."""
        line = f"{TAG} {text}"
        logger.info("%s: %s", self.run_id, text)
        try:
            self.store.append_log(self.run_id, [line])
        except Exception as err:
            logger.warning("could not write to the log of %s: %s", self.run_id, err)
        if self.run_dir.is_dir():
            with self.log_file.open("a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    def timing(self, stage: str, t0: float) -> None:
        """Record how long a stage took."""
        self.summary["timings"][stage] = round(time.time() - t0, 3)

    def remaining(self, stage: str) -> float | None:
        """Seconds left before the run's deadline; raises StageTimeout when none are."""
        if self.deadline is None:
            return None
        left = self.deadline - time.time()
        if left <= 0:
            raise StageTimeout(f"{stage} stage timed out: the run's timeout passed before it began")
        return left

    def check_abort(self) -> None:
        """Raise Cancelled when someone asked to cancel the run."""
        if self.store.is_aborted(self.run_id):
            raise Cancelled("cancelled while preparing")

    def _workdir(self, spec: TaskSpec, co: Checkout) -> Path:
        return co.path / spec.workdir if spec.workdir else co.path


def entry_head(spec: TaskSpec, co: Checkout) -> list[str]:
    """The interpreter arguments that name what to run: ['-m', module] or [script path]."""
    if spec.module:
        return ["-m", spec.module]
    script = co.path / spec.entry
    if not script.is_file():
        raise RunError(
            f"entry {spec.entry!r} does not exist in {co.repo_url} at {co.commit[:12]}",
            "check the path (relative to the repository root) and that the file is committed or in the diff",
        )
    return [str(script)]


def stage_hint(outcome: ProcessOutcome) -> str:
    """A hint for a failed run: its last output line, where the reason usually is."""
    lines = [line for line in outcome.tail if line.strip()]
    return f"last line: {lines[-1][:300]}" if lines else "the run printed nothing"
