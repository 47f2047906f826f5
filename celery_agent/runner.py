"""Process supervision: own process group, log pump, timeout, abort, resource sampling, kill.

:func:`run_process` spawns the run's command in its own process group, streams its output in line
batches to a sink (and a log file), samples the tree's CPU and memory, stops it on timeout or abort
(TERM to the group, grace, KILL, psutil as the backstop) and makes sure nothing it started outlives
it. No signal handlers are installed: this runs inside worker children and threads.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import os
import select
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import psutil

from .errors import RunError

logger = logging.getLogger(__name__)

__all__ = ["MAX_LINE", "LineSink", "ProcessOutcome", "Status", "Usage", "kill_tree", "run_process"]

Status = Literal["succeeded", "failed", "aborted", "timed_out"]

#: receives a batch of output lines (without their newline); may raise, the lines are kept
LineSink = Callable[[list[str]], None]

#: longest line delivered as one; longer ones are split into pieces of this many characters
MAX_LINE = 64 * 1024

_LEFTOVER_GRACE = 1.0  # longest TERM -> KILL wait for processes left behind by a finished run
_PIPE_DRAIN = 2.0  # how long the pipe may stay open after the run's processes are gone
_KILL_WAIT = 2.0  # how long to wait for KILLed processes to disappear
_REAP_TIMEOUT = 5.0  # how long to wait for the direct child's exit status after a KILL
_READ_SIZE = 1 << 18  # bytes per read from the output pipe


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
) -> ProcessOutcome:
    """Run ``argv`` in its own process group and supervise it until it ends; never raises for
    the process's own failure (that is the outcome's status), only :class:`RunError` when it cannot
    be started. Output lines go to ``sink`` in batches and to ``log_file``."""
    log = _open_log(log_file)
    try:
        proc = _spawn(argv, env, cwd)
    except BaseException:
        if log is not None:
            log.close()
        raise
    assert proc.stdout is not None
    started = time.monotonic()
    pump = _LogPump(proc.stdout.fileno(), sink, log, batch_lines, batch_interval, tail_lines)
    sampler = _Sampler(proc.pid, sample_interval)
    watch = _Watch(timeout, should_abort, abort_event, poll_interval, started)
    status: Status | None = None
    reason = ""
    try:
        pump.start()
        if on_start is not None:
            on_start(proc.pid)
        status, reason = _supervise(proc, watch, sampler, grace)
    except BaseException:
        _terminate(_collect(proc.pid, proc.pid, sampler.seen), proc.pid, 0.0)
        raise
    finally:
        exit_code = _finish(proc, sampler, grace, stopped=status is not None)
        duration = time.monotonic() - started
        pump.finish(_PIPE_DRAIN)
        proc.stdout.close()
    return _outcome(status, reason, exit_code, duration, proc.pid, pump, sampler)


def kill_tree(pid: int, *, grace: float, pgid: int | None = None) -> None:
    """Stop process ``pid``, its process group ``pgid`` (default: ``pid``, the group it leads) and
    every descendant: TERM, up to ``grace`` seconds to exit, then KILL. Descendants are collected
    before any signal, so one that left the group (``setsid``) is still KILLed. A process that is
    already gone is not an error."""
    group = pid if pgid is None else pgid
    _terminate(_collect(pid, group, {}), group, grace)


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
    try:
        return subprocess.Popen(
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

    def sleep(self, now: float) -> None:
        wait = self.poll_interval
        if self.timeout is not None:
            wait = max(0.0, min(wait, self.started + self.timeout - now))
        if self.abort_event is not None:
            self.abort_event.wait(wait)
        else:
            time.sleep(wait)


def _supervise(
    proc: subprocess.Popen[bytes], watch: _Watch, sampler: _Sampler, grace: float
) -> tuple[Status | None, str]:
    """Wait for the process to exit, or stop it; return (None, "") or (status, reason)."""
    while not _exited(proc):
        now = time.monotonic()
        sampler.maybe_sample(now)
        if watch.timed_out(now):
            return _stop(proc, sampler, grace, "timed_out", f"timeout after {watch.timeout:g}s")
        if watch.aborted():
            return _stop(proc, sampler, grace, "aborted", "cancelled")
        watch.sleep(now)
    return None, ""


def _stop(
    proc: subprocess.Popen[bytes], sampler: _Sampler, grace: float, status: Status, reason: str
) -> tuple[Status | None, str]:
    logger.info("stopping process %d: %s", proc.pid, reason)
    sampler.sample()
    _terminate(_collect(proc.pid, proc.pid, sampler.seen), proc.pid, grace)
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
    proc: subprocess.Popen[bytes], sampler: _Sampler, grace: float, *, stopped: bool
) -> int | None:
    """Stop what the run left behind, then reap the child and return its exit code."""
    if not stopped:
        sampler.sample()  # the exited child's own and reaped children's CPU time
        found = _collect(proc.pid, proc.pid, sampler.seen)
        leftovers = [p for p in found if p.pid != proc.pid and _alive(p)]
        if leftovers:
            logger.warning("the run left %d process(es) running; stopping them", len(leftovers))
            _terminate(leftovers, proc.pid, min(grace, _LEFTOVER_GRACE))
    try:
        return proc.wait(timeout=_REAP_TIMEOUT)
    except subprocess.TimeoutExpired:
        logger.error("process %d did not exit after KILL; leaving it", proc.pid)
        return None


def _outcome(
    status: Status | None,
    reason: str,
    exit_code: int | None,
    duration: float,
    pid: int,
    pump: _LogPump,
    sampler: _Sampler,
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
        usage=sampler.usage,
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


# -- log pump -----------------------------------------------------------------------------------
class _LogPump:
    """Reads the output pipe in large chunks, splits it into lines, and hands batches to the sink.

    A reader thread splits; a flusher thread writes each batch to the log file and delivers it.
    Lines the sink refused stay queued, in order, and go out with the next flush.
    """

    def __init__(
        self, fd: int, sink: LineSink, log: IO[str] | None, batch: int, interval: float, tail: int
    ) -> None:
        self._fd, self._sink, self._log = fd, sink, log
        self._batch, self._interval = max(1, batch), interval
        self._cond = threading.Condition()
        self._pending: list[str] = []
        self._pending_since = 0.0
        self._eof = False
        self._stop = threading.Event()
        self._unsent: list[str] = []
        self._retry_at = 0.0
        self._sink_error: str | None = None
        self.lines = 0
        self.tail: deque[str] = deque(maxlen=max(0, tail))
        self.first_line_at: float | None = None
        self._reader = threading.Thread(target=self._read_loop, name="log-reader", daemon=True)
        self._flusher = threading.Thread(target=self._flush_loop, name="log-flusher", daemon=True)

    def start(self) -> None:
        self._reader.start()
        self._flusher.start()

    def finish(self, drain: float) -> None:
        """Wait for the end of output (at most ``drain`` seconds), deliver the rest, close."""
        self._reader.join(drain)
        if self._reader.is_alive():
            logger.warning("output pipe still open %.1fs after the run ended; closing it", drain)
            self._stop.set()
            self._reader.join()
        self._flusher.join()
        if self._unsent:
            where = f"; they are in {self._log.name}" if self._log else ""
            logger.warning("%d log lines were not delivered%s", len(self._unsent), where)
        if self._log is not None:
            self._log.close()

    # reader side
    def _read_loop(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        partial = ""
        try:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN | select.POLLHUP | select.POLLERR)
            while not self._stop.is_set():
                if not poller.poll(100):
                    continue
                data = os.read(self._fd, _READ_SIZE)
                if not data:
                    break
                partial = self._split(partial + decoder.decode(data))
        except OSError as exc:
            logger.warning("reading the run's output failed: %s", exc)
        finally:
            rest = partial + decoder.decode(b"", final=True)
            self._push(_cut_long([rest.rstrip("\r")]) if rest else [], eof=True)

    def _split(self, text: str) -> str:
        """Queue the complete lines of ``text``; return what follows the last line end."""
        hold = "\r" if text.endswith("\r") else ""  # may be the first half of a \r\n
        if hold:
            text = text[:-1]
        parts = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        partial = parts.pop()
        if len(text) > MAX_LINE:
            parts = _cut_long(parts)
            if len(partial) > MAX_LINE:
                *full, partial = _cut_long([partial])
                parts.extend(full)
        if parts:
            self._push(parts)
        return partial + hold

    def _push(self, lines: list[str], eof: bool = False) -> None:
        with self._cond:
            if lines and self.first_line_at is None:
                self.first_line_at = time.time()
            if lines and not self._pending:
                self._pending_since = time.monotonic()
                self._cond.notify()
            self._pending.extend(lines)
            if eof or len(self._pending) >= self._batch:
                self._eof = self._eof or eof
                self._cond.notify()

    # flusher side
    def _flush_loop(self) -> None:
        eof = False
        while not eof:
            with self._cond:
                while not self._due():
                    self._cond.wait(self._wait_time())
                batch, self._pending, eof = self._pending, [], self._eof
            self._deliver(batch)

    def _due(self) -> bool:
        now = time.monotonic()
        return (
            self._eof
            or len(self._pending) >= self._batch
            or (bool(self._pending) and now >= self._pending_since + self._interval)
            or (bool(self._unsent) and now >= self._retry_at)
        )

    def _wait_time(self) -> float | None:
        deadlines = [self._pending_since + self._interval] if self._pending else []
        if self._unsent:
            deadlines.append(self._retry_at)
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _deliver(self, batch: list[str]) -> None:
        if batch:
            self.lines += len(batch)
            self.tail.extend(batch)
            self._write_log(batch)
            self._unsent.extend(batch)
        self._send()

    def _write_log(self, batch: list[str]) -> None:
        if self._log is None:
            return
        try:
            self._log.write("\n".join(batch) + "\n")
            self._log.flush()
        except OSError as exc:
            logger.warning("cannot write the run's log file %s: %s", self._log.name, exc)

    def _send(self) -> None:
        sent, unsent = 0, self._unsent
        try:
            while sent < len(unsent):
                chunk = unsent[sent : sent + self._batch]
                self._sink(chunk)
                sent += len(chunk)
        except Exception as exc:
            self._sink_failed(exc)
        else:
            if self._sink_error is not None:
                logger.info("log sink works again; delivered the queued lines")
            self._sink_error = None
        finally:
            del unsent[:sent]

    def _sink_failed(self, exc: Exception) -> None:
        self._retry_at = time.monotonic() + self._interval
        if self._sink_error is None:
            logger.warning("log sink failed (%s); keeping the lines and retrying", exc)
        self._sink_error = str(exc)


def _cut_long(lines: list[str]) -> list[str]:
    """Split lines longer than MAX_LINE into MAX_LINE-sized pieces."""
    out: list[str] = []
    for line in lines:
        if len(line) <= MAX_LINE:
            out.append(line)
        else:
            out.extend(line[i : i + MAX_LINE] for i in range(0, len(line), MAX_LINE))
    return out


# -- resource sampling --------------------------------------------------------------------------
@dataclass
class _Sampler:
    """Sums CPU time and RSS over the process tree; remembers every descendant it saw."""

    pid: int
    interval: float
    usage: Usage = field(default_factory=Usage)
    seen: dict[int, psutil.Process] = field(default_factory=dict)
    next_at: float = 0.0

    def maybe_sample(self, now: float) -> None:
        if now >= self.next_at:
            self.next_at = now + self.interval
            self.sample()

    def sample(self) -> None:
        procs = _tree(self.pid)
        if not procs:
            return
        cpu, rss = 0.0, 0
        for proc in procs:
            self.seen.setdefault(proc.pid, proc)
            cpu_p, rss_p = _proc_usage(proc)
            cpu, rss = cpu + cpu_p, rss + rss_p
        u = self.usage
        u.cpu_seconds = max(cpu, u.cpu_seconds or 0.0)
        u.max_rss_bytes = max(rss, u.max_rss_bytes or 0)
        u.samples += 1


def _proc_usage(proc: psutil.Process) -> tuple[float, int]:
    try:
        with proc.oneshot():
            t = proc.cpu_times()
            rss = proc.memory_info().rss
        return t.user + t.system + t.children_user + t.children_system, rss
    except psutil.Error:
        return 0.0, 0


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


# -- killing ------------------------------------------------------------------------------------
def _collect(pid: int, pgid: int, extra: Mapping[int, psutil.Process]) -> list[psutil.Process]:
    """The process, its group's members, their descendants, and those of ``extra`` still alive."""
    found: dict[int, psutil.Process] = {}
    own = pgid == os.getpgrp()
    for root in [pid] if own else [pid, *_group_pids(pgid)]:
        for proc in _tree(root):
            found.setdefault(proc.pid, proc)
    for proc in extra.values():
        if proc.pid not in found and _alive(proc):
            found[proc.pid] = proc
    found.pop(os.getpid(), None)
    return list(found.values())


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid:
                pids.append(pid)
        except OSError:
            continue
    return pids


def _terminate(procs: list[psutil.Process], pgid: int, grace: float) -> None:
    """TERM the group (and known processes outside it), wait ``grace``, KILL, wait for the end."""
    own = pgid == os.getpgrp()
    outside = procs if own else [p for p in procs if _pgid(p) != pgid]
    if not own:
        _signal_group(pgid, signal.SIGTERM)
    _signal_each(outside, signal.SIGTERM)
    if grace > 0 and not _wait_gone(procs, grace):
        logger.info("processes still running %.1fs after TERM; sending KILL", grace)
    if not own:
        _signal_group(pgid, signal.SIGKILL)
    _signal_each([p for p in procs if _alive(p)], signal.SIGKILL)
    if not _wait_gone(procs, _KILL_WAIT):
        logger.warning("processes %s survived KILL", [p.pid for p in procs if _alive(p)])


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the group is gone
    except PermissionError:
        logger.warning("not allowed to signal process group %d", pgid)


def _signal_each(procs: list[psutil.Process], sig: signal.Signals) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):  # gone, or not ours to signal
            proc.send_signal(sig)


def _pgid(proc: psutil.Process) -> int | None:
    try:
        return os.getpgid(proc.pid)
    except OSError:
        return None


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (a zombie has exited; only its parent's reap is missing)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone(procs: list[psutil.Process], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.002
    while any(_alive(p) for p in procs):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True
