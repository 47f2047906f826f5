"""Process supervision: own process group, log pump, timeout, abort, resource sampling, kill.

:func:`run_process` spawns the run's command in its own process group, streams its output in line
batches to a sink (and a log file), samples the tree's CPU and memory, stops it on timeout or abort
(TERM to the group, grace, KILL, psutil as the backstop) and makes sure nothing it started outlives
it. No signal handlers are installed: this runs inside worker children and threads. The
supervising thread waits on the child's exit and its output in one ``poll`` and reads the output
itself (:mod:`.logpump`, :mod:`.childwait`); the process-tree handling lives in
:mod:`.proctree`.

The run's process group is given to this process's guard (:mod:`.guard`) while it runs: a pool
process that is killed (``kill -9``, ``revoke(terminate=True)``, the whole worker) takes the run's
group with it. Processes that left the group are found by their ``CELERY_AGENT_RUN_ID`` and killed
by :mod:`.attempts`.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from .childwait import Waiter, Watch
from .errors import RunError
from .guard import guard
from .logpump import MAX_LINE, LineSink, LogPump
from .notes import open_log
from .proctree import TreeSampler, alive, collect, kill_tree, proc_group_empty, terminate

logger = logging.getLogger(__name__)

__all__ = ["MAX_LINE", "LineSink", "ProcessOutcome", "Status", "Usage", "kill_tree", "run_process"]

Status = Literal["succeeded", "failed", "aborted", "timed_out"]

_LEFTOVER_GRACE = 1.0  # longest TERM -> KILL wait for processes left behind by a finished run
_PIPE_DRAIN = 2.0  # how long the pipe may stay open after the run's processes are gone
_REAP_TIMEOUT = 5.0  # how long to wait for the direct child's exit status after a KILL
_FIRST_SAMPLE = 0.2  # the first look at the run's process tree (a short run needs none: its
#                      usage comes with its exit status)


@dataclass
class Usage:
    """Resource use of the run's process tree, sampled while it ran."""

    cpu_seconds: float | None = None
    max_rss_bytes: int | None = None
    samples: int = 0


@dataclass
class ProcessOutcome:
    """How a supervised process ended, with its output summary and resource use."""

    status: Status
    exit_code: int | None
    duration: float
    pid: int
    lines: int
    tail: list[str]
    usage: Usage
    reason: str = ""
    first_line_at: float | None = None


def run_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    sink: LineSink,
    log_file: Path | None = None,
    timeout: float | None = None,
    grace: float = 10.0,
    should_abort: Callable[[], bool] | None = None,
    abort_event: threading.Event | None = None,
    poll_interval: float = 0.2,
    batch_lines: int = 1000,
    batch_interval: float = 0.1,
    tail_lines: int = 50,
    sample_interval: float = 1.0,
    on_start: Callable[[int], None] | None = None,
    scrub: Callable[[list[str]], list[str]] | None = None,
    sink_last: LineSink | None = None,
) -> ProcessOutcome:
    """Run ``argv`` in its own process group and supervise it until it ends; never raises for
    the process's own failure (that is the outcome's status), only :class:`RunError` when it cannot
    be started. Output lines go to ``sink`` in batches and to ``log_file``, through ``scrub`` first
    when given (it hides secret values); the lines still waiting when the output ends go to
    ``sink_last`` instead when given (see :mod:`.logpump`)."""
    log = _open_log(log_file)
    try:
        proc = _spawn(argv, env, cwd)
    except BaseException:
        if log is not None:
            log.close()
        raise
    assert proc.stdout is not None
    started = time.monotonic()
    pump = LogPump(proc.stdout.fileno(), sink, log, batch_lines, batch_interval, tail_lines, scrub,
                   last=sink_last)  # fmt: skip
    sampler = TreeSampler(proc.pid, sample_interval, next_at=started + _FIRST_SAMPLE)
    watch = Watch(timeout, should_abort, abort_event, poll_interval, started)
    status: Status | None = None
    reason = ""
    try:
        if on_start is not None:
            on_start(proc.pid)
        status, reason = _supervise(proc, watch, sampler, grace, pump)
    except BaseException:
        terminate(collect(proc.pid, proc.pid, sampler.seen), proc.pid, 0.0)
        raise
    finally:
        exit_code = _finish(proc, sampler, grace, pump, stopped=status is not None)
        duration = time.monotonic() - started
        guard().remove(proc.pid)
        pump.finish(_PIPE_DRAIN)
        proc.stdout.close()
    return _outcome(status, reason, exit_code, duration, proc.pid, pump, sampler)


# -- spawning ---------------------------------------------------------------------------------
def _open_log(log_file: Path | None) -> IO[str] | None:
    if log_file is None:
        return None
    try:
        try:  # (closed by the pump)
            return open_log(log_file)
        except FileNotFoundError:  # its folder is missing: make it
            log_file.parent.mkdir(parents=True, exist_ok=True)
            return open_log(log_file)
    except OSError as exc:
        raise RunError(
            f"cannot open the run's log file {log_file}: {exc.strerror or exc}",
            hint="check that the log folder exists and is writable by the worker",
        ) from exc


def _spawn(argv: Sequence[str], env: Mapping[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    if not argv:
        raise RunError("nothing to run: the command line is empty", hint="give a program to run")
    if not Path(cwd).is_dir():
        raise RunError(
            f"working directory {cwd} does not exist",
            hint="check the spec's workdir and that the checkout succeeded",
        )
    if logger.isEnabledFor(logging.DEBUG):  # (the run's log has its command line)
        logger.debug("starting %s in %s", shlex.join(argv), cwd)
    try:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        raise _spawn_error(argv[0], exc) from exc
    guard().add(proc.pid)  # its group dies with this process
    return proc


def _spawn_error(program: str, exc: OSError) -> RunError:
    if isinstance(exc, FileNotFoundError):
        return RunError(
            f"cannot run {program!r}: no such executable",
            hint="check the program path, or that it is on the PATH of the run's environment",
        )
    if isinstance(exc, PermissionError):
        return RunError(
            f"cannot run {program!r}: permission denied",
            hint="make it executable (chmod +x) or run it through its interpreter",
        )
    return RunError(f"cannot run {program!r}: {exc}", hint="check the command line and the host")


# -- supervision ------------------------------------------------------------------------------
def _supervise(
    proc: subprocess.Popen[bytes], watch: Watch, sampler: TreeSampler, grace: float, pump: LogPump
) -> tuple[Status | None, str]:
    """Wait for the process to exit, or stop it; return (None, "") or (status, reason)."""
    waiter = Waiter(proc.pid, pump)
    try:
        return _wait_or_stop(proc, watch, sampler, grace, waiter, pump)
    finally:
        waiter.close()


def _wait_or_stop(
    proc: subprocess.Popen[bytes],
    watch: Watch,
    sampler: TreeSampler,
    grace: float,
    waiter: Waiter,
    pump: LogPump,
) -> tuple[Status | None, str]:
    while not _exited(proc):
        now = time.monotonic()
        sampler.maybe_sample(now)
        if watch.timed_out(now):
            reason = f"timeout after {watch.timeout:g}s"
            return _stop(proc, sampler, grace, pump, "timed_out", reason)
        if watch.aborted():
            return _stop(proc, sampler, grace, pump, "aborted", "cancelled")
        watch.sleep(now, waiter)
    return None, ""


def _stop(
    proc: subprocess.Popen[bytes],
    sampler: TreeSampler,
    grace: float,
    pump: LogPump,
    status: Status,
    reason: str,
) -> tuple[Status | None, str]:
    logger.info("stopping process %d: %s", proc.pid, reason)
    sampler.sample()
    pump.start()  # its output keeps flowing (a full pipe would block its shutdown) during grace
    terminate(collect(proc.pid, proc.pid, sampler.seen), proc.pid, grace)
    return status, reason


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """True once the child has exited, without reaping it (its pid and group stay reserved)."""
    if proc.returncode is not None:
        return True
    if not hasattr(os, "waitid"):
        return proc.poll() is not None
    try:
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        return os.waitid(os.P_PID, proc.pid, flags) is not None
    except ChildProcessError:
        return True


def _finish(
    proc: subprocess.Popen[bytes],
    sampler: TreeSampler,
    grace: float,
    pump: LogPump,
    *,
    stopped: bool,
) -> int | None:
    """Stop what the run left behind, then reap the child and return its exit code."""
    if not stopped:
        exit_code = _reap_exited(proc, sampler)
        if exit_code is None:  # no wait4 here: look at the exited child's usage in /proc
            sampler.sample()
        _stop_leftovers(proc.pid, sampler, grace, pump)
        if exit_code is not None:
            return exit_code
    try:
        return proc.wait(timeout=_REAP_TIMEOUT)
    except subprocess.TimeoutExpired:
        logger.error("process %d did not exit after KILL; leaving it", proc.pid)
        return None


def _reap_exited(proc: subprocess.Popen[bytes], sampler: TreeSampler) -> int | None:
    """Reap the exited child with its resource use (its own and its reaped children's CPU time,
    and peak memory), which the kernel keeps for the parent: no look at /proc is needed."""
    if proc.returncode is not None or not hasattr(os, "wait4"):
        return None
    try:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.add_rusage(usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024)
    return proc.returncode


def _stop_leftovers(pid: int, sampler: TreeSampler, grace: float, pump: LogPump) -> None:
    """Stop the processes a finished run left running: its process group's members, and any
    process of the run seen earlier. An empty group (the usual case) costs one ``killpg(0)``."""
    if proc_group_empty(pid) and not any(alive(p) for p in sampler.seen.values() if p.pid != pid):
        return
    found = collect(pid, pid, sampler.seen)
    leftovers = [p for p in found if p.pid != pid and alive(p)]
    if leftovers:
        logger.warning("the run left %d process(es) running; stopping them", len(leftovers))
        pump.start()  # they may still write to the run's output
        terminate(leftovers, pid, min(grace, _LEFTOVER_GRACE))


def _outcome(
    status: Status | None,
    reason: str,
    exit_code: int | None,
    duration: float,
    pid: int,
    pump: LogPump,
    sampler: TreeSampler,
) -> ProcessOutcome:
    if status is None:
        status = "succeeded" if exit_code == 0 else "failed"
        reason = "" if exit_code == 0 else _exit_reason(exit_code)
    return ProcessOutcome(
        status=status,
        exit_code=exit_code,
        duration=duration,
        pid=pid,
        lines=pump.lines,
        tail=list(pump.tail),
        usage=Usage(
            cpu_seconds=sampler.cpu_seconds,
            max_rss_bytes=sampler.max_rss_bytes,
            samples=sampler.samples,
        ),
        reason=reason,
        first_line_at=pump.first_line_at,
    )


def _exit_reason(exit_code: int | None) -> str:
    if exit_code is None:
        return "exit status unknown"
    if exit_code < 0:
        try:
            return f"killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"killed by signal {-exit_code}"
    return f"exit code {exit_code}"
