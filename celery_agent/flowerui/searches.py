"""Searches as the pages and the JSON API serve them: the recent ones, and one with its trials."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..search.plot import best_so_far, scored
from ..search.record import SearchRecord

if TYPE_CHECKING:
    from ..state import RunStore

#: searches listed by default (newest first)
LISTED = 50
_NUMBERS = ("started_at", "finished_at", "best_value")


def search_list(store: RunStore, limit: int = LISTED) -> list[dict[str, Any]]:
    """The newest searches first: id, objective, direction, sampler, state, times, number of trials
    and the best trial so far (its number, value and run; None until one has a value)."""
    ids = SearchRecord(store).recent(limit)
    pipe = store.r.pipeline(transaction=False)
    for search_id in ids:
        pipe.hgetall(store.keys.search(search_id))
        pipe.hlen(store.keys.search_trials(search_id))
    got = pipe.execute() if ids else []
    out = []
    for search_id, raw, trials in zip(ids, got[::2], got[1::2], strict=True):
        if raw:
            out.append(_summary(search_id, raw, int(trials)))
    return out


def _summary(search_id: str, raw: dict[str, str], trials: int) -> dict[str, Any]:
    row: dict[str, Any] = {"id": search_id, "trials": trials}
    for key in ("objective", "direction", "sampler", "state", "out_dir", "best_run"):
        row[key] = raw.get(key) or None
    for key in _NUMBERS:
        row[key] = float(raw[key]) if raw.get(key) else None
    row["best_trial"] = int(raw["best_trial"]) if raw.get("best_trial") else None
    return row


def search_detail(store: RunStore, search_id: str) -> dict[str, Any]:
    """One search: its settings and state, its trials ranked best first (``to_json`` of
    :class:`..search.results.SearchResult`), how many are in each state, and its objective chart's
    data: ``objective_points`` ([[trial, value]] of the trials with a value, by trial number) and
    ``best_so_far`` (the running best at each of them); and ``param_points``: for each numeric
    parameter, ``{"x": "lr" (or "log10(lr)" for a loguniform one), "points": [[x, value], ...]}``.
    Raises UnknownRunError when no search has that id."""
    result = SearchRecord(store).load(search_id)
    raw = store.r.hgetall(store.keys.search(search_id))
    trials = scored(result)
    values = [float(t.value or 0.0) for t in trials]
    numbers = [t.number for t in trials]
    times = {key: float(raw[key]) if raw.get(key) else None for key in _NUMBERS[:2]}
    return result.to_json() | times | {
        "id": search_id,
        "counts": result.counts(),
        "objective_points": [[n, v] for n, v in zip(numbers, values, strict=True)],
        "best_so_far": [[n, v] for n, v in zip(numbers, best_so_far(values, result.direction), strict=True)],
        "param_points": param_points(result.space, [t.params for t in trials], values),
    }  # fmt: skip


def param_points(
    space: dict[str, str], params: list[dict[str, Any]], values: list[float]
) -> dict[str, dict[str, Any]]:
    """The objective against each parameter whose values are all numbers (a loguniform one on a
    log10 axis); a parameter with any other value (a word, a bool) is left out."""
    out = {}
    for name, dimension in space.items():
        found = [p.get(name) for p in params]
        if not found or not all(_numeric(x) for x in found):
            continue
        xs = [float(x) for x in found if x is not None]
        log = dimension.startswith("loguniform") and all(x > 0 for x in xs)
        points = [[math.log10(x) if log else x, v] for x, v in zip(xs, values, strict=True)]
        out[name] = {"x": f"log10({name})" if log else name, "points": points}
    return out


def _numeric(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
