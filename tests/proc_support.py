"""Helpers for tests that run real child processes under the runner: a recording sink, a
snippet runner with fast polling, and a check that a process has ended."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil

from celery_agent.runner import ProcessOutcome, run_process

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


class Collect:
    """A sink that records each batch it receives."""

    def __init__(self, fail_first: int = 0) -> None:
        self.batches: list[list[str]] = []
        self.fail_left = fail_first
        self.calls = 0

    def __call__(self, lines: list[str]) -> None:
        self.calls += 1
        if self.fail_left > 0:
            self.fail_left -= 1
            raise ConnectionError("redis away")
        self.batches.append(list(lines))

    @property
    def lines(self) -> list[str]:
        return [line for batch in self.batches for line in batch]


def run_py(code: str, sink: Collect | None = None, **kwargs: object) -> ProcessOutcome:
    """Run a Python snippet under run_process with fast polling."""
    kwargs.setdefault("poll_interval", 0.02)
    kwargs.setdefault("batch_interval", 0.02)
    return run_process(
        [sys.executable, "-c", code],
        env=ENV,
        cwd=Path.cwd(),
        sink=sink if sink is not None else Collect(),
        **kwargs,  # type: ignore[arg-type]
    )


def gone(pid: int) -> bool:
    """Whether ``pid`` has ended now (a zombie counts as ended: it runs nothing)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
