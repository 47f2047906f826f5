"""A run's launch on its worker: the GPUs it holds while it runs, the command and environment it
runs with, and its supervision, its log streaming into Redis (the steps :class:`.pipeline.Job`
takes between preparing the environment and collecting the outcome)."""

from __future__ import annotations

import shlex
import time
from typing import TYPE_CHECKING

from . import checkpoints, metrics, runenv, state
from . import leases as leases_mod
from . import params as params_mod
from .artifacts import ArtifactStore
from .errors import ConfigError
from .executors import get_executor
from .executors.base import PreparedEnv, RunRequest
from .gpus import gpu_ids, pin_env
from .monitoring.gpu import GpuDevice
from .monitoring.sampler import RunGpuSampler
from .runner import ProcessOutcome
from .source import Checkout
from .spec import TaskSpec
from .stages import entry_head
from .stopwatch import CHECK_EVERY

if TYPE_CHECKING:
    from .pipeline import Job


def run_on_gpus(job: Job, spec: TaskSpec, co: Checkout, prepared: PreparedEnv) -> ProcessOutcome:
    """Restore the checkpoints the run starts from, then take its GPUs (leased on a dynamic
    worker: a long restore holds none idle) and run it on them."""
    resumed = resume(job, spec)  # the checkpoints it starts from, before anything runs
    job.check_abort()  # (a restore a cancel or a drain cut short: the entry never starts)
    s = job.ctx.settings
    wait = min(s.gpu_wait, job.clock.remaining("gpu") or s.gpu_wait)
    with leases_mod.held(job.ctx.leases, job.ctx.gpus.devices, job.want, job.run_id,
                         ttl=s.gpu_lease_ttl, wait=wait,
                         should_abort=lambda: job.store.is_aborted(job.run_id)) as gpus:  # fmt: skip
        if job.ctx.gpus.mode != "unbound":
            job._defer(gpus=gpu_ids(gpus))
            job.note(f"GPUs ({job.ctx.gpus.mode}): {', '.join(gpu_ids(gpus)) or 'none'}")
        with RunGpuSampler(s.gpu_sample_interval) as sampler:
            outcome = supervise(job, spec, co, prepared, gpus, resumed)
        job.gpu_usage = sampler.summary()
        return outcome


def supervise(
    job: Job,
    spec: TaskSpec,
    co: Checkout,
    prepared: PreparedEnv,
    gpus: list[GpuDevice],
    resumed: checkpoints.Resumed,
) -> ProcessOutcome:
    """Run the entry under supervision on ``gpus``, from the checkpoints ``resumed`` restored,
    its log streaming into Redis."""
    args, hook = params_mod.for_spec(spec, job.run_dir / "params.json")
    executor = get_executor(spec.executor, job.ctx.executor_settings)
    interp_args = [*entry_head(spec, co), *args]
    argv = executor.command(prepared, interp_args)
    env = runenv.build(
        base=job.ctx.base_env,
        spec_env=spec.env,
        agent=runenv.run_vars(job.run_id, job.run_dir, job.output_dir, spec, job.ctx.settings)
        | hook
        | job.input_env
        | resumed.env,
        path_prefix=prepared.path_prefix,
        extra=prepared.env,
        threads=job.ctx.threads,
    ) | pin_env(job.ctx.gpus.mode, gpus)
    secrets = runenv.secret_values(env)  # credentials the run was given never reach the log
    held = job.held
    assert held is not None

    # the first batch carries the agent's deferred lines and the running state, the lines
    # still waiting at the end go with the end record; metric lines also go to the run's
    # metrics stream
    sink = metrics.tap(held.send, job.store, job.run_id)
    job.note(f"$ {shlex.join(argv)}")
    held.defer_state(state.RUNNING)  # sent with the run's first output (or within 50 ms)
    request = RunRequest(
        env=env,
        cwd=co.path / spec.workdir if spec.workdir else co.path,
        sink=sink,
        log_file=job.log_file,
        timeout=job.clock.remaining("run"),
        grace=spec.grace if spec.grace is not None else job.ctx.settings.grace,
        should_abort=job.stops,
        poll_interval=CHECK_EVERY,
        source_dir=co.path,
        output_dir=job.output_dir,
        labels={"run_id": job.run_id, "worker": job.ctx.worker, "queue": spec.queue},
        gpus=gpu_ids(gpus),
        scrub=(lambda lines: runenv.scrub(lines, secrets)) if secrets else None,
        sink_last=sink.then(held.defer),
    )
    job.notes.flush()  # the agent's lines come before the run's in the log file
    t0 = time.time()
    sync = resumed.sync.start() if resumed.sync is not None else None
    try:
        outcome = executor.run(prepared, interp_args, request)
    finally:  # its last round, now that nothing writes: at the end, on cancel, on drain
        if sync is not None:
            kept = job.summary["checkpoints"] = sync.stop()
            if line := checkpoints.describe(kept):
                job.note(line)
    sink.flush()
    job.timing("run", t0)
    if outcome.first_line_at:
        job.summary["timings"]["first_line"] = round(outcome.first_line_at - job.started, 3)
    return outcome


def resume(job: Job, spec: TaskSpec) -> checkpoints.Resumed:
    """Restore the checkpoints the run starts from (an earlier attempt's, or ``resume_from``'s)
    and make the sync of its own (:mod:`.checkpoints`); the restore is a stage of its own."""
    s, held = job.ctx.settings, job.held
    assert held is not None
    try:
        store = ArtifactStore.for_home(s.artifact_root, s.home)
    except ConfigError as err:  # (a URL with a password: the end's upload reports it too)
        job.note(f"checkpoints: not kept ({err})")
        return checkpoints.Resumed(None, {checkpoints.ATTEMPT_ENV: str(job.attempt)})
    interval = spec.checkpoint_sync if spec.checkpoint_sync is not None else s.checkpoint_sync
    t0 = time.time()
    out = checkpoints.resume(
        store, job.run_id, output_dir=job.output_dir, rel=spec.checkpoint_dir,
        attempt=job.attempt, resume_from=spec.resume_from, interval=interval,
        exclude=spec.output_exclude, note=job.note,
        report=lambda fields: held.defer(checkpoints=fields),
        active=lambda: held.lost_to is None,  # (a stalled attempt whose run went elsewhere)
        stopped=job.stops,  # (a cancel or a drain ends a long restore between two files)
    )  # fmt: skip
    if out.resumed is not None:
        job.timing("restore", t0)
        job.summary["resumed"] = out.resumed
        job._defer(resumed=out.resumed)
    return out
