"""A run's metric series as the pages and the JSON API serve them: ``[step, value]`` pairs.

A value reported without a step gets its position in its series (0, 1, ...) as its step; a value
that is not finite (NaN, inf) is served as ``null`` (JSON has no NaN) and the charts leave a gap.
Series longer than a limit (2000 points by default) are downsampled here, on the server: the range
between the first and the last point is cut into equal buckets and each bucket keeps its lowest and
its highest value, so spikes survive; the first and the last point are always kept.

Reading a long stream is what costs (redis-py parses every entry), and a run page asks again every
few seconds while the run goes on; so the series read are kept in this process (:class:`SeriesCache`,
compact arrays, bounded) and each later read fetches only the entries added since.
"""

from __future__ import annotations

import math
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..lookup import find_run
from ..metrics import MAX_ENTRIES
from ..state import TERMINAL

if TYPE_CHECKING:
    from ..state import RunStore

#: points a series keeps before it is downsampled
MAX_POINTS = 2000
#: the smallest and the largest limit a caller may ask for
LIMITS = (10, 20_000)
#: stream entries read per XRANGE (a long stream is read in pieces)
CHUNK = 20_000
#: points the cache holds, all runs together (16 bytes each), before it drops the least recent run
CACHED_POINTS = 2_000_000

Pair = list[Any]  # [step, value or None]
NAN = float("nan")


@dataclass
class Series:
    """One metric's points in arrival order: steps and values (NaN where not finite)."""

    steps: array[float] = field(default_factory=lambda: array("d"))
    values: array[float] = field(default_factory=lambda: array("d"))

    def add(self, step: str, value: str) -> None:
        """Append one stream entry's step ("" when none: its position) and value."""
        v = float(value)
        self.steps.append(float(step) if step else float(len(self.steps)))
        self.values.append(v if math.isfinite(v) else NAN)

    def pairs(self, limit: int | None = None) -> list[Pair]:
        """The points as ``[step, value]`` (None for NaN), downsampled to ``limit`` when given."""
        idx = range(len(self.values)) if limit is None else picks(self.values, limit)
        return [[_number(self.steps[i]), _value(self.values[i])] for i in idx]


def _number(x: float) -> float | int:
    return int(x) if x.is_integer() else x


def _value(v: float) -> float | None:
    return None if v != v else v


def picks(values: array[float], limit: int) -> list[int]:
    """Which points a series of ``values`` keeps at ``limit`` (their indexes, in order): all of
    them when it fits; else the first, the last, and each bucket's lowest and highest value."""
    n = len(values)
    if n <= limit:
        return list(range(n))
    buckets = max(1, (limit - 2) // 2)
    size = (n - 2) / buckets
    out = [0]
    for b in range(buckets):
        out += _extremes(values, 1 + round(b * size), 1 + round((b + 1) * size))
    out.append(n - 1)
    return out


def _extremes(values: array[float], a: int, b: int) -> list[int]:
    """Indexes of the lowest and highest value in ``values[a:b]``, in order (one when they are the
    same point; the first when none is a number)."""
    chunk = values[a:b]
    if not chunk:
        return []
    if sum(chunk) == sum(chunk):  # no NaN: min and max at C speed
        lo, hi = chunk.index(min(chunk)), chunk.index(max(chunk))
    else:
        valued = [i for i, v in enumerate(chunk) if v == v]
        if not valued:
            return [a]
        lo = min(valued, key=chunk.__getitem__)
        hi = max(valued, key=chunk.__getitem__)
    return [a + i for i in sorted({lo, hi})]


@dataclass
class _Run:
    last_id: str = "-"
    series: dict[str, Series] = field(default_factory=dict)
    points: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class SeriesCache:
    """The metric series of recently read runs, each brought up to date by reading only the
    stream entries after the last one read. Least recently read runs are dropped beyond
    ``max_points``; a run whose stream got trimmed (past ~200,000 entries) is read afresh."""

    def __init__(self, max_points: int = CACHED_POINTS) -> None:
        self.max_points = max_points
        self._runs: OrderedDict[tuple[str, str], _Run] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, store: RunStore, run_id: str) -> dict[str, Series]:
        """Every series of the run, up to date (names in first-reported order)."""
        key = (store.keys.prefix, run_id)
        with self._lock:
            run = self._runs.get(key) or self._runs.setdefault(key, _Run())
            self._runs.move_to_end(key)
        with run.lock:
            if run.points > MAX_ENTRIES * 1.1:  # the stream was trimmed: match it again
                run.last_id, run.series, run.points = "-", {}, 0
            _catch_up(store, run_id, run)
            series = dict(run.series)
        self._evict()
        return series

    def _evict(self) -> None:
        with self._lock:
            while (
                len(self._runs) > 1 and sum(r.points for r in self._runs.values()) > self.max_points
            ):
                self._runs.popitem(last=False)


def _catch_up(store: RunStore, run_id: str, run: _Run) -> None:
    """Read the run's stream entries after ``run.last_id`` into its series."""
    stream = store.keys.metrics(run_id)
    while True:
        start = "-" if run.last_id == "-" else "(" + run.last_id
        entries = store.r.xrange(stream, start, "+", count=CHUNK)
        for _, data in entries:
            name = data.get("n", "")
            series = run.series.get(name) or run.series.setdefault(name, Series())
            series.add(data.get("s", ""), data.get("v", "nan"))
        if entries:
            run.last_id = entries[-1][0]
            run.points += len(entries)
        if len(entries) < CHUNK:
            return


#: the cache the pages and the API read through
CACHE = SeriesCache()


def clamp_limit(limit: int | None) -> int:
    """``limit`` within :data:`LIMITS` (the default when None)."""
    if limit is None:
        return MAX_POINTS
    return max(LIMITS[0], min(LIMITS[1], limit))


def run_series(
    store: RunStore,
    run_id: str,
    limit: int = MAX_POINTS,
    names: Iterable[str] | None = None,
    cache: SeriesCache = CACHE,
) -> dict[str, Any]:
    """Every metric series of one run (or only ``names``), each downsampled to ``limit``.

    ``{"run_id", "state", "ended", "series": {name: [[step, value], ...]}, "counts": {name:
    points reported}, "downsampled": [names]}`` (``ended``: the run is over, its series will not
    grow); raises UnknownRunError for an id that names no run."""
    state = store.r.hget(store.keys.run(run_id), "state")
    if state is None:
        run_id = find_run(store, run_id)
        state = store.r.hget(store.keys.run(run_id), "state")
    wanted = set(names) if names else None
    series, counts, cut = {}, {}, []
    for name, points in cache.read(store, run_id).items():
        if wanted is not None and name not in wanted:
            continue
        series[name] = points.pairs(limit)
        counts[name] = len(points.values)
        if len(series[name]) < counts[name]:
            cut.append(name)
    return {"run_id": run_id, "state": state, "ended": state in TERMINAL, "series": series,
            "counts": counts, "downsampled": cut}  # fmt: skip
