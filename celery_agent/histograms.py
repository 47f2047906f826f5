"""Histograms kept in Redis hashes, cheap to write and to scrape.

An observation is two commands on the hash of its histogram family: ``HINCRBY`` of the one bucket
the value falls in and ``HINCRBYFLOAT`` of the sum. Field names are
``{series}|{label}|{bound}`` (the bound as :data:`Histogram.bounds` spells it, ``+Inf`` for the
last) and ``{series}|{label}|sum``, where ``series`` names the histogram (``duration``) and
``label`` the value of its one label (a queue, an executor). Buckets are stored one by one, not
cumulated: the reader (:func:`families`) adds them up and counts the observations as they go, so
a scrape is one ``HGETALL`` of each hash, whatever the number of runs.

The run store's transition script writes run duration and queue wait (:func:`lua_observe` makes
its Lua); the worker writes env builds through :func:`observe` on the pipeline of the run's next
write. ``prometheus_client`` is imported by :func:`families` only (the ``metrics`` extra).
Changing a family's bounds leaves the old buckets behind, unread; its sum then counts them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.core import HistogramMetricFamily

logger = logging.getLogger(__name__)

_MINUTE, _HOUR = 60.0, 3600.0


@dataclass(frozen=True)
class Histogram:
    """One histogram series in a hash: its name there, the metric it is served as, its buckets."""

    series: str  #: the first part of its field names
    metric: str  #: the Prometheus name it is served under
    help: str
    label: str  #: the name of its one label
    upper: tuple[float, ...]  #: upper bounds of the buckets, ascending (+Inf is added)

    @property
    def bounds(self) -> list[str]:
        """Every bucket's bound as its field names spell it, ``+Inf`` last."""
        return [format(b, "g") for b in self.upper] + ["+Inf"]

    def bucket(self, value: float) -> str:
        """The bound of the bucket ``value`` falls in."""
        return next((format(b, "g") for b in self.upper if value <= b), "+Inf")


#: from a run's start (claimed by a worker) to its end, per queue
RUN_DURATION = Histogram(
    "duration", "celery_agent_run_duration_seconds",
    "seconds from a run's start on a worker to its end (succeeded, failed, aborted, timed out)",
    "queue",
    (1, 5, 15, 30, _MINUTE, 2 * _MINUTE, 5 * _MINUTE, 10 * _MINUTE, 30 * _MINUTE, _HOUR,
     2 * _HOUR, 4 * _HOUR, 8 * _HOUR, 12 * _HOUR, 24 * _HOUR, 48 * _HOUR, 7 * 24 * _HOUR),
)  # fmt: skip
#: from a run's submission (or its return to the queue) to its start on a worker, per queue
QUEUE_WAIT = Histogram(
    "wait", "celery_agent_run_queue_wait_seconds",
    "seconds a run waited in its queue: from its submission (or its return to the queue) to its "
    "start on a worker",
    "queue",
    (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, _MINUTE, 5 * _MINUTE, 15 * _MINUTE, _HOUR, 4 * _HOUR,
     12 * _HOUR, 24 * _HOUR),
)  # fmt: skip
#: a successful environment build, per executor kind
ENV_BUILD = Histogram(
    "build", "celery_agent_env_build_seconds",
    "seconds an environment build took (a cache miss that built)",
    "executor",
    (1, 2.5, 5, 10, 30, _MINUTE, 2 * _MINUTE, 5 * _MINUTE, 10 * _MINUTE, 30 * _MINUTE, _HOUR),
)  # fmt: skip


def observe(pipe: Any, key: str, histogram: Histogram, label: str, value: float) -> None:
    """Queue one observation of ``value`` (``label`` its label's value) on ``pipe``."""
    value = max(0.0, float(value))
    pipe.hincrby(key, f"{histogram.series}|{label}|{histogram.bucket(value)}", 1)
    pipe.hincrbyfloat(key, f"{histogram.series}|{label}|sum", value)


def lua_observe(*histograms: Histogram) -> str:
    """Lua that defines ``observe(key, series, label, value)`` for ``histograms`` (as
    :func:`observe` does it, for a script: a negative value - clocks apart - counts as 0)."""
    tables = "\n".join(
        f"bounds['{h.series}'] = {{{', '.join(repr(float(b)) for b in h.upper)}}}\n"
        f"names['{h.series}'] = {{{', '.join(repr(s) for s in h.bounds)}}}"
        for h in histograms
    )
    return f"""
local bounds, names = {{}}, {{}}
{tables}
local function observe(key, series, label, value)
  if value < 0 then value = 0 end
  local le = '+Inf'
  for i, bound in ipairs(bounds[series]) do
    if value <= bound then le = names[series][i] break end
  end
  redis.call('HINCRBY', key, series .. '|' .. label .. '|' .. le, 1)
  redis.call('HINCRBYFLOAT', key, series .. '|' .. label .. '|sum', string.format('%.6f', value))
end
"""


def families(raw: dict[str, str], histograms: Iterable[Histogram]) -> list[HistogramMetricFamily]:
    """The Prometheus histograms of one hash (``HGETALL``'s reply), one family per histogram,
    each label value a series of cumulative buckets; fields that do not parse are skipped."""
    parsed: dict[tuple[str, str], dict[str, float]] = {}
    for field, value in raw.items():
        series, _, rest = field.partition("|")
        label, _, bound = rest.rpartition("|")
        try:
            parsed.setdefault((series, label), {})[bound] = float(value)
        except ValueError:
            logger.warning("skipping histogram field %r: %r is not a number", field, value)
    return [_family(h, parsed) for h in histograms]


def _family(h: Histogram, parsed: dict[tuple[str, str], dict[str, float]]) -> HistogramMetricFamily:
    from prometheus_client.core import HistogramMetricFamily  # (the metrics extra: the exporter)
    from prometheus_client.utils import floatToGoString

    family = HistogramMetricFamily(h.metric, h.help, labels=[h.label])
    for (series, label), fields in sorted(parsed.items()):
        if series != h.series:
            continue
        total, buckets = 0.0, []
        for bound, upper in zip(h.bounds, [*h.upper, float("inf")], strict=True):
            total += fields.get(bound, 0.0)
            buckets.append((floatToGoString(upper), total))
        family.add_metric([label], buckets, fields.get("sum", 0.0))
    return family
