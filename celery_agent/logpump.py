"""Log pump: reads a child's output pipe, splits it into lines, delivers them in batches.

The pipe carries the child's stdout and stderr together. Lines end at ``\n``, ``\r\n`` or a lone
``\r``; bytes that are not UTF-8 are replaced; lines longer than :data:`MAX_LINE` are cut into
pieces. Each batch is appended to the run's log file, then handed to a :data:`LineSink`; lines the
sink refuses are kept, in order, and retried.
"""

from __future__ import annotations

import codecs
import logging
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
# After a small read while earlier lines still wait for their batch, the reader pauses this long
# so that a program printing fast is read in chunks of many lines, not one wake-up per line (a
# 64 KiB pipe takes ~5 ms to fill at 200k lines/s, so the writer never waits on it). A line after
# a quiet spell finds nothing pending and is read at once.
_SMALL_READ = 4096
_GATHER = 0.001


class LogPump:
    """Reads the output pipe in large chunks, splits it into lines, and hands batches to the sink.

    A reader thread splits; a flusher thread writes each batch to the log file and delivers it.
    Lines the sink refused stay queued, in order, and go out with the next flush.

    ``fd`` is the pipe's read end; ``log`` (closed by :meth:`finish`) gets every line. A batch
    goes out once it holds ``batch`` lines, or at most every ``interval`` seconds: a line that
    follows a quiet spell goes out at once (low latency), lines that keep coming are gathered
    (few round trips). After
    :meth:`finish`, ``lines`` is the number of lines read, ``tail`` the last ``tail`` of them and
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
    ) -> None:
        self._fd, self._sink, self._log, self._scrub = fd, sink, log, scrub
        self._batch, self._interval = max(1, batch), interval
        self._cond = threading.Condition()
        self._pending: list[str] = []
        self._last_flush = 0.0
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
        """Start the reader and flusher threads."""
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
                if len(data) < _SMALL_READ and self._pending:
                    time.sleep(_GATHER)  # lines keep coming: let them gather in the pipe
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
                self._last_flush = time.monotonic()
            self._deliver(batch)

    def _due(self) -> bool:
        now = time.monotonic()
        return (
            self._eof
            or len(self._pending) >= self._batch
            or (bool(self._pending) and now >= self._last_flush + self._interval)
            or (bool(self._unsent) and now >= self._retry_at)
        )

    def _wait_time(self) -> float | None:
        deadlines = [self._last_flush + self._interval] if self._pending else []
        if self._unsent:
            deadlines.append(self._retry_at)
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _deliver(self, batch: list[str]) -> None:
        if batch and self._scrub is not None:
            batch = self._scrub(batch)
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
