"""Scalars a run reports (loss, accuracy, ...): one line on stdout, a stream in Redis.

A run reports a metric by printing one line in this format, which any script in any language can
write (the package need not be installed in the run's environment)::

    @@celery-agent:metric {"name": "val_acc", "value": 0.93, "step": 3}

``step`` is optional. :func:`report` writes that line for Python scripts that can import the
package. On the worker, :func:`tap` wraps the run's log sink: every line still goes to the log, and
the metric lines are parsed and appended, one round trip per batch, to the run's metrics stream
(``store.keys.metrics(run_id)``; entry fields ``n`` name, ``v`` value, ``s`` step or ``""``).
:func:`last_values` and :func:`series` read it back.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import runscripts

if TYPE_CHECKING:
    from .logpump import LineSink
    from .state import RunStore

logger = logging.getLogger(__name__)

__all__ = [
    "PREFIX", "Metric", "MetricTap", "Point", "all_series", "append", "format_line", "last_value",
    "last_values", "parse_line", "report", "series", "tap",
]  # fmt: skip

#: what starts a metric line on the run's stdout
PREFIX = "@@celery-agent:metric "

#: entries a run's metrics stream keeps (approximately); older ones are trimmed
MAX_ENTRIES = 200_000

#: metrics held for a retry while Redis refuses them; beyond this the oldest are dropped
MAX_PENDING = 100_000

#: metrics one script call appends (a batch is split into calls of this size, one round trip)
_CHUNK = 1000


@dataclass(frozen=True)
class Metric:
    """One reported scalar."""

    name: str
    value: float
    step: int | None = None


@dataclass(frozen=True)
class Point:
    """One value of a metric series, with the time Redis received it (seconds since the epoch)."""

    step: int | None
    value: float
    time: float


def format_line(name: str, value: float, step: int | None = None) -> str:
    """The stdout line that reports ``value`` of metric ``name`` (at ``step``)."""
    body: dict[str, Any] = {"name": name, "value": float(value)}
    if step is not None:
        body["step"] = int(step)
    return PREFIX + json.dumps(body)


def report(name: str, value: float, step: int | None = None) -> None:
    """Report a scalar from inside a run: writes its metric line to stdout and flushes."""
    sys.stdout.write(format_line(name, value, step) + "\n")
    sys.stdout.flush()


def parse_line(line: str) -> Metric | None:
    """The metric a line reports; None for any other line, or a metric line that is malformed."""
    if not line.startswith(PREFIX):
        return None
    try:
        body = json.loads(line[len(PREFIX) :])
        return _metric(body)
    except (ValueError, TypeError, KeyError) as exc:
        logger.warning("ignoring a malformed metric line %r: %s", line[:200], exc)
        return None


def _metric(body: Any) -> Metric:
    name, value, step = body["name"], body["value"], body.get("step")
    if not isinstance(name, str) or not name:
        raise ValueError("name must be a non-empty string")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("value must be a number")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        raise ValueError("step must be an integer")
    return Metric(name, float(value), step)


class MetricTap:
    """A :data:`LineSink` that passes lines on to the log sink and stores the metric lines.

    A batch the log sink refuses raises as before (the log pump keeps and retries it) and is not
    parsed, so a retried batch never stores its metrics twice. Metrics Redis refuses are kept, in
    order, and sent with the next batch (or :meth:`flush`); each is numbered, so a batch Redis
    applied but whose reply was lost is not stored twice when it is sent again.
    """

    def __init__(self, sink: LineSink, store: RunStore, run_id: str) -> None:
        self.sink, self.store, self.run_id = sink, store, run_id
        self.pending: list[Metric] = []
        self.sent = 0
        self._seen = 0  #: metrics parsed so far (the number after the last of ``pending``)
        self._writer = f"{uuid.uuid4().hex}.metrics"

    def __call__(self, lines: list[str]) -> None:
        self.sink(lines)
        self._store(lines)

    def then(self, sink: LineSink) -> LineSink:
        """A sink that passes lines to ``sink`` instead, their metrics still stored here."""

        def deliver(lines: list[str]) -> None:
            sink(lines)
            self._store(lines)

        return deliver

    def _store(self, lines: list[str]) -> None:
        found = [m for m in map(parse_line, lines) if m is not None]
        if found or self.pending:
            self.pending.extend(found)
            self._seen += len(found)
            del self.pending[:-MAX_PENDING]
            self.flush()

    def flush(self) -> bool:
        """Send the held metrics; returns whether nothing is left held."""
        if not self.pending:
            return True
        first = self._seen - len(self.pending)
        try:
            append(self.store, self.run_id, self.pending, writer=self._writer, first=first)
        except Exception as exc:  # Redis down: keep them, the log still flows
            logger.warning(
                "could not store %d metrics of %s: %s", len(self.pending), self.run_id, exc
            )
            return False
        self.sent += len(self.pending)
        self.pending = []
        return True


def tap(sink: LineSink, store: RunStore, run_id: str) -> MetricTap:
    """Wrap the run's log sink so metric lines also go to the run's metrics stream."""
    return MetricTap(sink, store, run_id)


def append(
    store: RunStore,
    run_id: str,
    metrics: Iterable[Metric],
    *,
    writer: str | None = None,
    first: int = 0,
) -> None:
    """Append metrics to the run's stream in one round trip. A ``writer`` (unique to one
    attempt's metrics) that may send a batch again gives its ``first`` number (how many it sent
    before): metrics already in the stream are not appended twice."""
    key = store.keys.metrics(run_id)
    pipe = store.r.pipeline(transaction=False)
    if writer is None:
        for m in metrics:
            pipe.xadd(key, _fields(m), maxlen=MAX_ENTRIES, approximate=True)
    else:
        keys, batch = [key, store.keys.log_sent(run_id)], list(metrics)
        for at in range(0, len(batch), _CHUNK):
            flat = [v for m in batch[at : at + _CHUNK] for v in _fields(m).values()]
            pipe.eval(runscripts.APPEND_METRICS, 2, *keys, writer, first + at, MAX_ENTRIES, *flat)
    pipe.execute()


def _fields(m: Metric) -> dict[str, str]:
    return {"n": m.name, "v": repr(m.value), "s": "" if m.step is None else str(m.step)}


def _entries(store: RunStore, run_id: str) -> list[tuple[str, dict[str, str]]]:
    return list(store.r.xrange(store.keys.metrics(run_id), "-", "+"))


def _point(entry_id: str, data: dict[str, str]) -> Point:
    step = int(data["s"]) if data.get("s") else None
    return Point(step, float(data.get("v", "nan")), int(entry_id.split("-")[0]) / 1000)


def series(store: RunStore, run_id: str, name: str) -> list[Point]:
    """Every value of metric ``name`` the run reported, in order."""
    return [_point(i, d) for i, d in _entries(store, run_id) if d.get("n") == name]


def all_series(store: RunStore, run_id: str) -> dict[str, list[Point]]:
    """Every metric the run reported: name -> its values in order (names in first-seen order)."""
    out: dict[str, list[Point]] = {}
    for entry_id, data in _entries(store, run_id):
        out.setdefault(data.get("n", ""), []).append(_point(entry_id, data))
    return out


def last_values(store: RunStore, run_id: str) -> dict[str, dict[str, Any]]:
    """The latest value of each metric: name -> {"value": float, "step": int | None}."""
    return {
        name: {"value": points[-1].value, "step": points[-1].step}
        for name, points in all_series(store, run_id).items()
    }


def last_value(store: RunStore, run_id: str, name: str) -> float | None:
    """The latest finite value of metric ``name``; None when it was never reported (or NaN/inf)."""
    value = last_values(store, run_id).get(name, {}).get("value")
    return value if isinstance(value, float) and math.isfinite(value) else None
