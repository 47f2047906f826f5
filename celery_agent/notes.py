"""The agent's own lines in a run's log file: buffered, and always ahead of the run's output.

A run's log file (``log.txt`` in its folder) holds the agent's lines (``[celery-agent] ...``) and
the run's output, which the runner appends through a handle of its own. Written and flushed one
by one, the five lines before a trivial run cost five writes; here they wait in a buffer until
:meth:`RunNotes.flush` (called before the run starts), until they are :data:`FLUSH_AFTER` seconds
old (a long environment build still shows its lines), or until :meth:`RunNotes.close`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO

FLUSH_AFTER = 0.5  #: the agent's lines reach the file at most this many seconds late
_BUFFER = 1 << 13  #: (a size given: no isatty/fstat probe of the file at open)


def open_log(log_file: Path) -> IO[str]:
    """A run's log file opened to append (by the agent's lines and by the runner's pump)."""
    return open(log_file, "a", encoding="utf-8", buffering=_BUFFER)  # noqa: SIM115


class RunNotes:
    """The agent's lines of one run, for ``log_file`` (opened once its folder exists)."""

    def __init__(self, log_file: Path) -> None:
        self.log_file = log_file
        self._file: IO[str] | None = None
        self._flushed = time.monotonic()  #: when the lines last reached the file

    def write(self, line: str) -> None:
        """Add ``line``; nothing is written while the run's folder does not exist yet."""
        if self._file is None:
            if not self.log_file.parent.is_dir():
                return
            self._file = open_log(self.log_file)
        self._file.write(line + "\n")
        if time.monotonic() - self._flushed >= FLUSH_AFTER:
            self.flush()

    def flush(self) -> None:
        """Write the buffered lines to the file (call it before the run's own output starts)."""
        if self._file is not None:
            self._file.flush()
        self._flushed = time.monotonic()

    def close(self) -> None:
        """Write what is left and let go of the file."""
        if self._file is not None:
            self._file.close()
            self._file = None
