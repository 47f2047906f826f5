"""Waiting on a run's child process: its stop conditions (:class:`Watch`: timeout, abort) and
its exit, with its output pumped meanwhile (:class:`Waiter`). :mod:`.runner` supervises with both.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .logpump import LogPump

logger = logging.getLogger(__name__)

_EVENT_SLICE = 0.02  # seconds between looks at an abort event while waiting for the child


@dataclass
class Watch:
    """The stop conditions of a run: timeout, abort callback, abort event."""

    timeout: float | None
    should_abort: Callable[[], bool] | None
    abort_event: threading.Event | None
    poll_interval: float
    started: float
    warned: bool = False

    def timed_out(self, now: float) -> bool:
        """Whether the run outlived its timeout."""
        return self.timeout is not None and now - self.started >= self.timeout

    def aborted(self) -> bool:
        """Whether someone asked the run to stop (a failing check counts as no)."""
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

    def sleep(self, now: float, waiter: Waiter) -> None:
        """Wait one poll interval, pumping the run's output meanwhile; wake at once when the
        child exits (or the abort event fires)."""
        wait = self.poll_interval
        if self.timeout is not None:
            wait = max(0.0, min(wait, self.started + self.timeout - now))
        if self.abort_event is None:
            waiter.wait(wait)
            return
        deadline = now + wait
        while not waiter.wait(min(_EVENT_SLICE, max(0.0, deadline - time.monotonic()))):
            if self.abort_event.is_set() or time.monotonic() >= deadline:
                return


class Waiter:
    """Waits for the child's exit and pumps its output in one ``poll`` (see
    :meth:`LogPump.pump`): the supervising thread reads and delivers the output itself, and wakes
    the moment the child exits. The exit shows on a pidfd where the kernel has them, else on a
    pipe a thread blocked in ``waitid`` writes to."""

    def __init__(self, pid: int, pump: LogPump) -> None:
        self.exited = False
        self._pump = pump
        try:
            self._fd = os.pidfd_open(pid)  # Linux 5.3+
        except (AttributeError, OSError):
            self._fd, write_end = os.pipe()
            threading.Thread(
                target=_signal_exit, args=(pid, write_end), name=f"exit-{pid}", daemon=True
            ).start()

    def wait(self, timeout: float) -> bool:
        """True once the child exited; waits up to ``timeout`` seconds for it, reading and
        delivering its output meanwhile."""
        if not self.exited:
            self.exited = self._pump.pump(timeout, until=self._fd)
        return self.exited

    def close(self) -> None:
        """Close the exit descriptor."""
        os.close(self._fd)


def _signal_exit(pid: int, write_end: int) -> None:
    """Wait for the child's exit (without reaping it), then make ``write_end``'s pipe readable."""
    try:
        if hasattr(os, "waitid"):
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        pass
    try:
        os.write(write_end, b"x")
    except OSError:  # the supervisor stopped waiting and closed its end
        pass
    finally:
        os.close(write_end)
