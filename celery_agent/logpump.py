"""Log pump: reads a child's output pipe, splits it into lines, delivers them in batches.

The pipe carries the child's stdout and stderr together. Lines end at ``\n``, ``\r\n`` or a lone
``\r``; bytes that are not UTF-8 are replaced; lines longer than :data:`MAX_LINE` are cut into
pieces. Each batch is appended to the run's log file, then handed to a :data:`LineSink`; lines the
sink refuses are kept, in order, and retried.

The pump has no thread of its own unless asked: the runner's supervising loop waits on the child's
exit and on the pipe in one ``poll`` and calls :meth:`LogPump.read` and :meth:`LogPump.flush_due`
(two threads per run, and their hand-offs, cost ~0.5 ms of CPU on every run). :meth:`LogPump.start`
runs the same loop in a thread, for owners that wait on something else (a container, or a run
being stopped). The lines that are still waiting when the output ends - for a short run, usually
all of them - go to the ``last`` sink when one is given: the run's end record carries them, one
round trip fewer.
"""

from __future__ import annotations

import codecs
import logging
import math
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import IO

logger = logging.getLogger(__name__)

__all__ = ["MAX_LINE", "LineSink", "LogPump"]

#: receives a batch of output lines (without their newline); may raise, the lines are kept
LineSink = Callable[[list[str]], None]

#: longest line delivered as one; longer ones are split into pieces of this many characters
MAX_LINE = 64 * 1024

_READ_SIZE = 1 << 18  # bytes per read from the output pipe
# After a small read while lines wait for their batch, the pump rests this long before it reads
# again, so that a program printing fast is read in chunks of many lines, not one wake-up per line
# (a 64 KiB pipe takes ~5 ms to fill at 200k lines/s, so the writer never waits on it).
_SMALL_READ = 4096
_REST = 0.001
# A line after a quiet spell waits this long for company: the rest of a burst goes out in the same
# batch, and the last lines of a program that is about to exit go out with its end record.
_GATHER = 0.02
_THREAD_WAIT = 0.1  # the pump thread's longest poll, so that a stop request is seen soon


class LogPump:
    """Splits the output pipe ``fd`` into lines and hands them to ``sink`` in batches.

    A batch goes out once it holds ``batch`` lines, or when its first line has waited
    :data:`_GATHER` seconds and the last batch went out ``interval`` seconds ago or more: a line
    after a quiet spell goes out within milliseconds, lines that keep coming are gathered (few
    round trips). ``log`` (closed by :meth:`finish`) gets every line first. After :meth:`finish`,
    ``lines`` is the number of lines read, ``tail`` the last ``tail`` of them and
    ``first_line_at`` the wall-clock time the first one arrived (None without output).
    """

    def __init__(
        self,
        fd: int,
        sink: LineSink,
        log: IO[str] | None,
        batch: int,
        interval: float,
        tail: int,
        scrub: Callable[[list[str]], list[str]] | None = None,
        last: LineSink | None = None,
    ) -> None:
        self._fd, self._sink, self._last, self._log, self._scrub = fd, sink, last, log, scrub
        self._batch, self._interval = max(1, batch), interval
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""
        self._pending: list[str] = []
        self._pending_since = 0.0
        self._last_flush = -math.inf
        self._eof = False
        self._rest = False  #: the last read was small while lines wait (see :meth:`_rested`)
        self._waiter: tuple[int, select.poll] | None = None  #: (exit fd, a poll of it alone)
        self._unsent: list[str] = []
        self._retry_at = 0.0
        self._sink_error: str | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.lines = 0
        self.tail: deque[str] = deque(maxlen=max(0, tail))
        self.first_line_at: float | None = None

    # -- driven by its owner --------------------------------------------------------------------
    def fileno(self) -> int:
        """The pipe to poll for output."""
        return self._fd

    @property
    def eof(self) -> bool:
        """Whether the output has ended (every writer closed the pipe)."""
        return self._eof

    def read(self) -> bool:
        """Read what the pipe holds (call it when a poll says the pipe is readable); False at the
        end of the output."""
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return True
        except OSError as exc:
            logger.warning("reading the run's output failed: %s", exc)
            data = b""
        if not data:
            self._eof = True
            return False
        self._partial = self._split(self._partial + self._decoder.decode(data))
        self._rest = len(data) < _SMALL_READ and bool(self._pending)
        return True

    def due_in(self, now: float) -> float | None:
        """Seconds until waiting lines (or a retry) must go out; None when nothing waits."""
        if len(self._pending) >= self._batch:
            return 0.0
        deadlines = []
        if self._pending:
            deadlines.append(max(self._last_flush + self._interval, self._pending_since + _GATHER))
        if self._unsent:
            deadlines.append(self._retry_at)
        return max(0.0, min(deadlines) - now) if deadlines else None

    def flush_due(self, now: float) -> None:
        """Deliver the waiting lines if they are due (see :meth:`due_in`)."""
        due = self.due_in(now)
        if due is not None and due <= 0:
            batch, self._pending = self._pending, []
            self._last_flush = now
            self._deliver(batch)

    def pump(self, timeout: float, until: int | None = None) -> bool:
        """Wait up to ``timeout`` seconds, reading and delivering the output as it comes (until
        it ends). With ``until``, a descriptor that turns readable at an event (the child's exit),
        return True the moment it does."""
        deadline = time.monotonic() + timeout
        poller = select.poll()  # (select.select fails on descriptors above 1023)
        if not self._eof:
            poller.register(self._fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        if until is not None:
            poller.register(until, select.POLLIN)
        while until is not None or not self._eof:
            now = time.monotonic()
            self.flush_due(now)
            due = self.due_in(now)
            wait = deadline - now if due is None else min(deadline - now, due)
            if wait <= 0 and now >= deadline:
                break
            for fd, _ in poller.poll(math.ceil(max(0.0, wait) * 1000)):
                if fd == until:
                    return True
                if not self.read():  # the output ended
                    poller.unregister(fd)
                elif self._rest and self._rested(until):
                    return True
        return False

    def _rested(self, until: int | None) -> bool:
        """Rest :data:`_REST` seconds after a small read while lines wait, so that the lines of a
        program printing fast gather in the pipe; True when ``until`` turned readable meanwhile
        (the child exited: its last lines are all in the pipe, nothing is worth waiting for)."""
        self._rest = False
        if until is None:
            time.sleep(_REST)
            return False
        if self._waiter is None or self._waiter[0] != until:
            waiter = select.poll()
            waiter.register(until, select.POLLIN)
            self._waiter = (until, waiter)
        return bool(self._waiter[1].poll(math.ceil(_REST * 1000)))

    # -- in a thread of its own -----------------------------------------------------------------
    def start(self) -> None:
        """Read and deliver in a thread from now on (until :meth:`finish`)."""
        if self._thread is None and not self._eof:
            self._thread = threading.Thread(target=self._loop, name="log-pump", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._eof and not self._stop.is_set():
            self.pump(_THREAD_WAIT)

    # -- the end --------------------------------------------------------------------------------
    def finish(self, drain: float) -> None:
        """Read to the end of the output (waiting at most ``drain`` seconds for it), deliver the
        rest (to ``last`` when given), close the log file."""
        if self._thread is not None:
            self._thread.join(drain)
            self._stop.set()
            self._thread.join()
        elif not self._eof:
            self.pump(drain)
        if not self._eof:
            logger.warning("output pipe still open %.1fs after the run ended; closing it", drain)
        rest = self._partial + self._decoder.decode(b"", final=True)
        if rest:
            self._queue(_cut_long([rest.rstrip("\r")]))
        batch, self._pending = self._pending, []
        if self._last is not None and not self._unsent and len(batch) <= self._batch:
            self._deliver(batch, self._last)
        else:
            self._deliver(batch)
        if self._unsent:
            where = f"; they are in {self._log.name}" if self._log else ""
            logger.warning("%d log lines were not delivered%s", len(self._unsent), where)
        if self._log is not None:
            self._log.close()

    # -- lines ----------------------------------------------------------------------------------
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
            self._queue(parts)
        return partial + hold

    def _queue(self, lines: list[str]) -> None:
        if not self._pending:
            self._pending_since = time.monotonic()
            if self.first_line_at is None:
                self.first_line_at = time.time()
        self._pending.extend(lines)

    def _deliver(self, batch: list[str], last: LineSink | None = None) -> None:
        if batch and self._scrub is not None:
            batch = self._scrub(batch)
        if batch:
            self.lines += len(batch)
            self.tail.extend(batch)
            self._write_log(batch)
            if last is not None:
                try:
                    last(batch)
                    return
                except Exception as exc:  # handed to the ordinary sink instead
                    logger.debug("the last-lines sink failed: %s", exc)
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
