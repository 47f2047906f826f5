"""Env cache outcomes of the fleet, per executor kind, in one Redis hash.

The env cache (:mod:`.envcache`) tells each outcome where it decides it: a hit, a miss it built,
a miss whose build failed. A worker's run queues the count on the pipeline of its next write
(:func:`count`, through :meth:`.keeper.Held.defer_write`: no round trip of its own), into
:meth:`.keys.Keys.env_cache_stats`: ``{kind}|hits``, ``{kind}|misses`` (built or failed),
``{kind}|failures`` and the build-time histogram :data:`.histograms.ENV_BUILD`. The exporter reads
it with one ``HGETALL`` (:func:`families`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import histograms
from .keys import Keys

if TYPE_CHECKING:
    from prometheus_client.core import Metric

HIT, BUILT, FAILED = "hit", "built", "failed"
_COUNTERS = (
    ("hits", "celery_agent_env_cache_hits", "env cache lookups that found the environment ready"),
    ("misses", "celery_agent_env_cache_misses", "env cache lookups that had to build"),
    ("failures", "celery_agent_env_build_failures", "environment builds that failed"),
)


def count(pipe: Any, keys: Keys, kind: str, outcome: str, seconds: float) -> None:
    """Queue the count of one env cache ``outcome`` of executor ``kind`` on ``pipe``."""
    key = keys.env_cache_stats()
    if outcome == HIT:
        pipe.hincrby(key, f"{kind}|hits", 1)
        return
    pipe.hincrby(key, f"{kind}|misses", 1)
    if outcome == BUILT:
        histograms.observe(pipe, key, histograms.ENV_BUILD, kind, seconds)
    else:
        pipe.hincrby(key, f"{kind}|failures", 1)


def families(raw: dict[str, str]) -> list[Metric]:
    """The counters (labelled ``executor``) and the build-time histogram of the hash's reply."""
    from prometheus_client.core import CounterMetricFamily

    out: list[Metric] = []
    for field, name, doc in _COUNTERS:
        family = CounterMetricFamily(name, doc, labels=["executor"])
        for kind, value in sorted(_per_kind(raw, field).items()):
            family.add_metric([kind], value)
        out.append(family)
    return [*out, *histograms.families(raw, [histograms.ENV_BUILD])]


def _per_kind(raw: dict[str, str], field: str) -> dict[str, float]:
    found = {}
    for name, value in raw.items():
        kind, _, last = name.rpartition("|")
        if last == field and "|" not in kind:
            try:
                found[kind] = float(value)
            except ValueError:
                continue
    return found
