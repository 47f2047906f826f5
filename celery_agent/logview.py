"""Windows on a run's log stream for readers that must stay quick on huge logs.

The stream (``{p}:run:{id}:log``) holds chunks of lines, one entry each. A page shows the tail
first (:func:`tail`: the last entries read newest first until enough lines), then earlier lines on
demand (:func:`before`), and follows new ones from the last id it has (:func:`follow`, ``XREAD
BLOCK``): no reader ever reads the whole log to show its end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .state import RunStore

#: lines a window holds at least (whole chunks, so a few more at most)
LINES = 2000
_BATCH = 100


@dataclass(frozen=True)
class LogWindow:
    """Lines of a log between stream ids ``first`` and ``last`` ("" when the window is empty);
    ``more``: earlier lines exist before ``first``."""

    lines: list[str]
    first: str
    last: str
    more: bool

    def to_json(self) -> dict[str, Any]:
        """The window as the JSON endpoints send it."""
        return {"lines": self.lines, "first": self.first, "last": self.last, "more": self.more}


def tail(store: RunStore, run_id: str, lines: int = LINES) -> LogWindow:
    """The last ``lines`` lines (or a little more) of the run's log."""
    return _backwards(store, run_id, "+", lines)


def before(store: RunStore, run_id: str, entry_id: str, lines: int = LINES) -> LogWindow:
    """The ``lines`` lines (or a little more) just before stream id ``entry_id``."""
    return _backwards(store, run_id, f"({entry_id}", lines)


def follow(store: RunStore, run_id: str, after: str, block: float) -> tuple[str, list[str]]:
    """Lines after stream id ``after``, waiting up to ``block`` seconds for the first;
    returns (the last id read, the lines)."""
    return store.read_log(run_id, after or "0-0", block=block)


def _backwards(store: RunStore, run_id: str, top: str, lines: int) -> LogWindow:
    key = store.keys.log(run_id)
    chunks: list[tuple[str, list[str]]] = []
    count, more = 0, False
    while count < lines:
        entries = store.r.xrevrange(key, max=top, min="-", count=_BATCH)
        for entry_id, data in entries:
            if count >= lines:
                more = True
                break
            chunk = str(data.get("l", "")).split("\n")
            chunks.append((entry_id, chunk))
            count += len(chunk)
        if len(entries) < _BATCH or more:
            break
        top = f"({entries[-1][0]}"
    if not more and chunks and count >= lines:
        more = bool(store.r.xrevrange(key, max=f"({chunks[-1][0]}", min="-", count=1))
    chunks.reverse()
    out = [line for _, chunk in chunks for line in chunk]
    first, last = (chunks[0][0], chunks[-1][0]) if chunks else ("", "")
    return LogWindow(out, first, last, more)
