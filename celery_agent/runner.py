"""Process supervision: own process group, log pump, timeout, abort, resource sampling, kill.

:func:`run_process` spawns the run's command in its own process group, streams its output in line
batches to a sink (and a log file), samples the tree's CPU and memory, stops it on timeout or abort
(TERM to the group, grace, KILL, psutil as the backstop) and makes sure nothing it started outlives
it. No signal handlers are installed: this runs inside worker children and threads. The pipe reading
lives in :mod:`.logpump`, the process-tree handling in :mod:`.proctree`.

On Linux the child asks the kernel for SIGKILL when the thread that started it exits
(``PR_SET_PDEATHSIG``, through util-linux's ``setpriv`` when installed): a pool process that is killed (``kill -9``, ``revoke(terminate=True)``)
takes the run's direct child with it. The signal is per process, so the child's own children
outlive it; those are found by their ``CELERY_AGENT_RUN_ID`` and killed by :mod:`.attempts`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from .errors import RunError
from .logpump import MAX_LINE, LineSink, LogPump
from .proctree import TreeSampler, alive, collect, kill_tree, proc_group_empty, terminate

logger = logging.getLogger(__name__)

__all__ = ["MAX_LINE", "LineSink", "ProcessOutcome", "Status", "Usage", "kill_tree", "run_process"]

Status = Literal["succeeded", "failed", "aborted", "timed_out"]

_LEFTOVER_GRACE = 1.0  # longest TERM -> KILL wait for processes left behind by a finished run
_EVENT_SLICE = 0.02  # seconds between looks at an abort event while waiting for the child
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
) -> ProcessOutcome:
    """Run ``argv`` in its own process group and supervise it until it ends; never raises for
    the process's own failure (that is the outcome's status), only :class:`RunError` when it cannot
    be started. Output lines go to ``sink`` in batches and to ``log_file``, through ``scrub`` first
    when given (it hides secret values)."""
    log = _open_log(log_file)
    try:
        proc = _spawn(argv, env, cwd)
    except BaseException:
        if log is not None:
            log.close()
        raise
    assert proc.stdout is not None
    started = time.monotonic()
    pump = LogPump(proc.stdout.fileno(), sink, log, batch_lines, batch_interval, tail_lines, scrub)
    sampler = TreeSampler(proc.pid, sample_interval, next_at=started + _FIRST_SAMPLE)
    watch = _Watch(timeout, should_abort, abort_event, poll_interval, started)
    status: Status | None = None
    reason = ""
    try:
        pump.start()
        if on_start is not None:
            on_start(proc.pid)
        status, reason = _supervise(proc, watch, sampler, grace)
    except BaseException:
        terminate(collect(proc.pid, proc.pid, sampler.seen), proc.pid, 0.0)
        raise
    finally:
        exit_code = _finish(proc, sampler, grace, stopped=status is not None)
        duration = time.monotonic() - started
        pump.finish(_PIPE_DRAIN)
        proc.stdout.close()
    return _outcome(status, reason, exit_code, duration, proc.pid, pump, sampler)


# -- spawning ---------------------------------------------------------------------------------
def _open_log(log_file: Path | None) -> IO[str] | None:
    if log_file is None:
        return None
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        return open(log_file, "a", encoding="utf-8")  # noqa: SIM115 - closed by the pump
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
    logger.info("starting %s in %s", shlex.join(argv), cwd)
    head, preexec = _die_with_parent(argv[0], env, cwd)
    try:
        return subprocess.Popen(
            [*head, *argv],
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
        )
    except OSError as exc:
        raise _spawn_error(argv[0], exc) from exc


_PR_SET_PDEATHSIG = 1
_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


def _die_with_parent(
    program: str, env: Mapping[str, str], cwd: Path
) -> tuple[list[str], Callable[[], None] | None]:
    """How the child asks to die with the thread spawning it (Linux only): a command head, or a
    preexec function.

    util-linux's ``setpriv --pdeathsig KILL`` sets it and execs the program (the setting survives
    the exec), so Python can start the child with vfork. A preexec function forces a full fork of
    the (large) worker process instead: ~15 ms and ~7 ms of CPU per run, measured. Without
    setpriv the preexec function is the fallback. With setpriv a missing program would only show
    as the child's exit code, so it is looked up first and reported as Popen would report it.
    """
    if not sys.platform.startswith("linux"):
        return [], None
    if _SETPRIV is not None:
        _check_program(program, env, cwd)
        return [_SETPRIV, "--pdeathsig", "KILL", "--"], None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return [], preexec


def _check_program(program: str, env: Mapping[str, str], cwd: Path) -> None:
    """Raise the OSError Popen would raise for a program that cannot be executed."""
    if os.sep in program:
        path = program if os.path.isabs(program) else os.path.join(cwd, program)
        if not os.path.exists(path):
            raise _spawn_error(program, FileNotFoundError(program))
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            raise _spawn_error(program, PermissionError(program))
    elif shutil.which(program, path=env.get("PATH", os.defpath)) is None:
        raise _spawn_error(program, FileNotFoundError(program))


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
@dataclass
class _Watch:
    """The stop conditions of a run: timeout, abort callback, abort event."""

    timeout: float | None
    should_abort: Callable[[], bool] | None
    abort_event: threading.Event | None
    poll_interval: float
    started: float
    warned: bool = False

    def timed_out(self, now: float) -> bool:
        return self.timeout is not None and now - self.started >= self.timeout

    def aborted(self) -> bool:
        if self.abort_event is not None and self.abort_event.is_set():
            return True
        if self.should_abort is None:
            return False
        try:
            return bool(self.should_abort())
        except Exception:
            if not self.warned:
                logger.warning(
                    "the abort check raised; treating it as 'not aborted'", exc_info=True
                )
            self.warned = True
            return False

    def sleep(self, now: float, exited: _ExitWait) -> None:
        """Wait one poll interval, waking at once when the child exits (or the abort event fires)."""
        wait = self.poll_interval
        if self.timeout is not None:
            wait = max(0.0, min(wait, self.started + self.timeout - now))
        if self.abort_event is None:
            exited.wait(wait)
            return
        deadline = now + wait
        while not exited.wait(min(_EVENT_SLICE, max(0.0, deadline - time.monotonic()))):
            if self.abort_event.is_set() or time.monotonic() >= deadline:
                return


def _supervise(
    proc: subprocess.Popen[bytes], watch: _Watch, sampler: TreeSampler, grace: float
) -> tuple[Status | None, str]:
    """Wait for the process to exit, or stop it; return (None, "") or (status, reason)."""
    exited = _ExitWait(proc.pid)
    try:
        return _wait_or_stop(proc, watch, sampler, grace, exited)
    finally:
        exited.close()


def _wait_or_stop(
    proc: subprocess.Popen[bytes],
    watch: _Watch,
    sampler: TreeSampler,
    grace: float,
    exited: _ExitWait,
) -> tuple[Status | None, str]:
    while not _exited(proc):
        now = time.monotonic()
        sampler.maybe_sample(now)
        if watch.timed_out(now):
            return _stop(proc, sampler, grace, "timed_out", f"timeout after {watch.timeout:g}s")
        if watch.aborted():
            return _stop(proc, sampler, grace, "aborted", "cancelled")
        watch.sleep(now, exited)
    return None, ""


class _ExitWait:
    """Waits for the child's exit (without reaping it) so the run ends the moment it exits:
    on a pidfd where the kernel has them (no thread), else from a thread blocked in ``waitid``."""

    def __init__(self, pid: int) -> None:
        self._fd: int | None = None
        self._event: threading.Event | None = None
        try:
            self._fd = os.pidfd_open(pid)  # Linux 5.3+
        except (AttributeError, OSError):
            self._event = threading.Event()
            threading.Thread(
                target=self._waitid, args=(pid,), name=f"exit-{pid}", daemon=True
            ).start()

    def wait(self, timeout: float) -> bool:
        """True once the child exited; waits up to ``timeout`` seconds for it."""
        if self._event is not None:
            return self._event.wait(timeout)
        assert self._fd is not None
        poller = select.poll()  # (select.select fails on descriptors above 1023)
        poller.register(self._fd, select.POLLIN)
        return bool(poller.poll(max(0.0, timeout) * 1000))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _waitid(self, pid: int) -> None:
        assert self._event is not None
        try:
            if hasattr(os, "waitid"):
                os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass
        self._event.set()


def _stop(
    proc: subprocess.Popen[bytes], sampler: TreeSampler, grace: float, status: Status, reason: str
) -> tuple[Status | None, str]:
    logger.info("stopping process %d: %s", proc.pid, reason)
    sampler.sample()
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
    proc: subprocess.Popen[bytes], sampler: TreeSampler, grace: float, *, stopped: bool
) -> int | None:
    """Stop what the run left behind, then reap the child and return its exit code."""
    if not stopped:
        exit_code = _reap_exited(proc, sampler)
        if exit_code is None:  # no wait4 here: look at the exited child's usage in /proc
            sampler.sample()
        _stop_leftovers(proc.pid, sampler, grace)
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


def _stop_leftovers(pid: int, sampler: TreeSampler, grace: float) -> None:
    """Stop the processes a finished run left running: its process group's members, and any
    process of the run seen earlier. An empty group (the usual case) costs one ``killpg(0)``."""
    if proc_group_empty(pid) and not any(alive(p) for p in sampler.seen.values() if p.pid != pid):
        return
    found = collect(pid, pid, sampler.seen)
    leftovers = [p for p in found if p.pid != pid and alive(p)]
    if leftovers:
        logger.warning("the run left %d process(es) running; stopping them", len(leftovers))
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
