"""A run's metric series as the pages and the JSON API serve them: ``[step, value]`` pairs.

A value reported without a step gets its position in its series (0, 1, ...) as its step; a value
that is not finite (NaN, inf) is served as ``null`` (JSON has no NaN) and the charts leave a gap.
Series longer than a limit (2000 points by default) are downsampled here, on the server: the range
between the first and the last point is cut into equal buckets and each bucket keeps its lowest and
its highest value, so spikes survive; the first and the last point are always kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..lookup import find_run
from ..metrics import Point, all_series

if TYPE_CHECKING:
    from ..state import RunStore

#: points a series keeps before it is downsampled
MAX_POINTS = 2000
#: the smallest and the largest limit a caller may ask for
LIMITS = (10, 20_000)

Pair = list[Any]  # [step, value or None]


def pairs(points: Iterable[Point]) -> list[Pair]:
    """``[step, value]`` for each point (step: its position when it has none; value: None when
    not finite)."""
    return [
        [i if p.step is None else p.step, p.value if math.isfinite(p.value) else None]
        for i, p in enumerate(points)
    ]


def downsample(series: list[Pair], limit: int = MAX_POINTS) -> list[Pair]:
    """At most ``limit`` of the pairs, in order: the first, the last, and the lowest and highest
    value of each bucket between them."""
    if len(series) <= limit:
        return series
    inner = series[1:-1]
    buckets = max(1, (limit - 2) // 2)
    size = len(inner) / buckets
    out = [series[0]]
    for b in range(buckets):
        out += _extremes(inner[round(b * size) : round((b + 1) * size)])
    out.append(series[-1])
    return out


def _extremes(chunk: list[Pair]) -> list[Pair]:
    """The lowest and the highest valued pairs of ``chunk`` in their order (one when they are
    the same pair; the first pair when no value is finite)."""
    valued = [i for i, p in enumerate(chunk) if p[1] is not None]
    if not valued:
        return chunk[:1]
    lo = min(valued, key=lambda i: chunk[i][1])
    hi = max(valued, key=lambda i: chunk[i][1])
    return [chunk[i] for i in sorted({lo, hi})]


def clamp_limit(limit: int | None) -> int:
    """``limit`` within :data:`LIMITS` (the default when None)."""
    if limit is None:
        return MAX_POINTS
    return max(LIMITS[0], min(LIMITS[1], limit))


def run_series(
    store: RunStore, run_id: str, limit: int = MAX_POINTS, names: Iterable[str] | None = None
) -> dict[str, Any]:
    """Every metric series of one run (or only ``names``), each downsampled to ``limit``.

    ``{"run_id", "series": {name: [[step, value], ...]}, "counts": {name: points reported},
    "downsampled": [names]}``; raises UnknownRunError for an id that names no run."""
    if not store.r.exists(store.keys.run(run_id)):
        run_id = find_run(store, run_id)
    wanted = set(names) if names else None
    series, counts, cut = {}, {}, []
    for name, points in all_series(store, run_id).items():
        if wanted is not None and name not in wanted:
            continue
        full = pairs(points)
        series[name] = downsample(full, limit)
        counts[name] = len(full)
        if len(series[name]) < len(full):
            cut.append(name)
    return {"run_id": run_id, "series": series, "counts": counts, "downsampled": cut}
