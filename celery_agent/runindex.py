"""The runs table's query: recent runs filtered, sorted and paged straight from the runs index.

The index (``{p}:runs``, run ids scored by submit time) is walked newest first in batches; for each
id only the few fields a table row needs are read (``HMGET``, one pipelined round trip per batch),
never the whole record (a spec with its diff can be large). A page ends as soon as it is full, so the
first page of an unfiltered table costs two round trips whatever the number of runs; a filter that
matches few runs reads at most ``scan`` ids per request and hands back a cursor to go on from.

A filter on a tag, a user or a queue walks that value's own index (``{p}:runs:by:...``, written at
submit, see :meth:`.keys.Keys.runs_by`) instead of every run, once :func:`complete_indexes` has
added the runs recorded before those indexes existed (Flower starts it in the background).
Ordering by submit time (newest or oldest first) pages through every run. Ordering by another
column (duration, attempt, state, name, queue, worker) sorts the runs that match among the newest
``window`` ones: a sort over every run ever recorded would have to read them all.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import SpecError
from .state import QUEUED, TERMINAL, RunStore

#: the record fields a table row reads (never the spec)
ROW_FIELDS = (
    "state", "name", "queue", "worker", "user", "tags", "attempt", "exit_code", "error", "waiting",
    "submitted_at", "preparing_at", "running_at", "gpus",
    *(f"{s}_at" for s in sorted(TERMINAL)),
)  # fmt: skip
FILTERS = ("state", "queue", "worker", "user", "name", "tag")
SORTS = ("submitted", "duration", "attempt", "state", "name", "queue", "worker")
BATCH = 200
MAX_LIMIT = 500
#: the filters with an index of their own, most selective first
INDEXED = ("tag", "user", "queue")


@dataclass(frozen=True)
class RunQuery:
    """What the table asks for: filters (exact values; ``name`` matches a part of the name),
    ``sort`` (a column of :data:`SORTS`, ``-`` first for descending), a page size, the cursor a
    previous page handed back, the metrics whose last value each row shows."""

    filters: Mapping[str, str] = field(default_factory=dict)
    sort: str = "-submitted"
    limit: int = 50
    cursor: str = ""
    metrics: tuple[str, ...] = ()
    scan: int = 5000
    window: int = 2000

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> RunQuery:
        """A query from URL arguments (``state=``, ``sort=``, ``limit=``, ``cursor=``,
        ``metrics=a,b``); a bad value raises :class:`SpecError` naming it and what it may be."""
        filters = {k: str(args[k]).strip() for k in FILTERS if str(args.get(k) or "").strip()}
        sort = str(args.get("sort") or "-submitted")
        if sort.lstrip("-") not in SORTS:
            raise SpecError(f"sort={sort!r} is not a column", f"use one of {', '.join(SORTS)}")
        try:
            limit = int(args.get("limit") or 50)
        except ValueError:
            raise SpecError(
                f"limit={args.get('limit')!r} is not a number", "give 1 to 500"
            ) from None
        if not 1 <= limit <= MAX_LIMIT:
            raise SpecError(f"limit={limit} is out of range", f"give 1 to {MAX_LIMIT}")
        names = tuple(m.strip() for m in str(args.get("metrics") or "").split(",") if m.strip())
        return cls(filters, sort, limit, str(args.get("cursor") or ""), names)


def page(store: RunStore, query: RunQuery, now: float | None = None) -> dict[str, Any]:
    """One page of the table: ``runs`` (rows), ``next`` (the cursor of the next page, None at
    the end), ``total`` (runs in the index), ``scanned`` (ids looked at)."""
    now = time.time() if now is None else now
    if query.sort.lstrip("-") == "submitted":
        rows, cursor, scanned = _by_time(store, query, now)
    else:
        rows, cursor, scanned = _sorted(store, query, now)
    if query.metrics:
        _add_metrics(store, rows, query.metrics)
    total = int(store.r.zcard(store.keys.runs()))
    return {"runs": rows, "next": cursor, "total": total, "scanned": scanned}


def _by_time(
    store: RunStore, query: RunQuery, now: float
) -> tuple[list[dict[str, Any]], str | None, int]:
    """Walk the index in submit order from the cursor (``score:id``) until the page is full; the
    next cursor is None once the index is used up."""
    newest = query.sort.startswith("-")
    bound, after = _cursor(query.cursor, newest)
    index = _index(store, query.filters)
    rows: list[dict[str, Any]] = []
    scanned = 0
    while len(rows) < query.limit and scanned < query.scan:
        ids = _ids(store, index, bound, newest, BATCH)
        fresh = _after(ids, after, bound)
        if not fresh:
            return rows, None, scanned
        for (run_id, score), got in zip(
            fresh, _rows(store, [i for i, _ in fresh], now), strict=True
        ):
            scanned += 1
            bound, after = score, run_id
            if got is not None and matches(got, query.filters):
                rows.append(got)
                if len(rows) == query.limit:
                    break
        if len(ids) < BATCH and len(rows) < query.limit:
            return rows, None, scanned
    return rows, f"{bound!r}:{after}", scanned


def _index(store: RunStore, filters: Mapping[str, str]) -> str:
    """The sorted set to walk: the index of the most selective indexed filter (when the indexes
    are complete), else every run's."""
    name = next((f for f in INDEXED if f in filters), None)
    if name is None or not store.r.exists(store.keys.runs_by_complete()):
        return str(store.keys.runs())
    return str(store.keys.runs_by(name, filters[name]))


def complete_indexes(store: RunStore, batch: int = 1000) -> int:
    """Add every recorded run to its queue, user and tag indexes (runs recorded before they
    existed); then mark them complete. Idempotent; returns the runs looked at (0 when the
    indexes were complete already)."""
    if store.r.exists(store.keys.runs_by_complete()):
        return 0
    done, key = 0, store.keys.runs()
    while True:
        entries = store.r.zrange(key, done, done + batch - 1, withscores=True)
        pipe = store.r.pipeline(transaction=False)
        for run_id, _ in entries:
            pipe.hmget(store.keys.run(run_id), ("queue", "user", "tags"))
        pipe2 = store.r.pipeline(transaction=False)
        for (run_id, score), (queue, user, tags) in zip(entries, pipe.execute(), strict=True):
            pairs = [("queue", queue), ("user", user), *(("tag", t) for t in _json_list(tags))]
            for name, value in pairs:
                if value:
                    pipe2.zadd(store.keys.runs_by(name, str(value)), {run_id: score}, nx=True)
        pipe2.execute()
        done += len(entries)
        if len(entries) < batch:
            store.r.set(store.keys.runs_by_complete(), "1")
            return done


def _ids(
    store: RunStore, key: str, bound: float | None, newest: bool, count: int
) -> list[tuple[str, float]]:
    if newest:
        top = "+inf" if bound is None else repr(bound)
        return list(store.r.zrevrangebyscore(key, top, "-inf", start=0, num=count, withscores=True))
    low = "-inf" if bound is None else repr(bound)
    return list(store.r.zrangebyscore(key, low, "+inf", start=0, num=count, withscores=True))


def _after(
    ids: list[tuple[str, float]], after: str | None, bound: float | None
) -> list[tuple[str, float]]:
    """The ids past the cursor: those at the cursor's own score up to and including its id are
    the previous page's (ties at one score come in a fixed order)."""
    if after is None:
        return ids
    for i, (run_id, score) in enumerate(ids):
        if score != bound:
            return ids[i:]
        if run_id == after:
            return ids[i + 1 :]
    return []


def _cursor(cursor: str, newest: bool) -> tuple[float | None, str | None]:
    if not cursor:
        return None, None
    score, sep, run_id = cursor.partition(":")
    try:
        return float(score), run_id if sep else None
    except ValueError:
        raise SpecError(f"cursor={cursor!r} is not one this table handed out",
                        "start again from the first page") from None  # fmt: skip


def _sorted(
    store: RunStore, query: RunQuery, now: float
) -> tuple[list[dict[str, Any]], str | None, int]:
    """Sort the matching runs among the newest ``window``; the cursor is an offset."""
    index = _index(store, query.filters)
    ids = [i for i, _ in store.r.zrevrange(index, 0, query.window - 1, withscores=True)]
    rows = [r for r in _rows(store, ids, now) if r is not None and matches(r, query.filters)]
    column, reverse = query.sort.lstrip("-"), query.sort.startswith("-")
    present = [r for r in rows if r.get(column) is not None]
    present.sort(key=lambda r: r[column], reverse=reverse)
    rows = present + [r for r in rows if r.get(column) is None]
    try:
        start = int(query.cursor or 0)
    except ValueError:
        raise SpecError(
            f"cursor={query.cursor!r} is not an offset", "start again from the first page"
        ) from None
    end = start + query.limit
    return rows[start:end], str(end) if end < len(rows) else None, len(ids)


def _rows(store: RunStore, ids: list[str], now: float) -> list[dict[str, Any] | None]:
    if not ids:
        return []
    pipe = store.r.pipeline(transaction=False)
    for run_id in ids:
        pipe.hmget(store.keys.run(run_id), ROW_FIELDS)
    return [
        row(i, dict(zip(ROW_FIELDS, v, strict=True)), now)
        for i, v in zip(ids, pipe.execute(), strict=True)
    ]


def row(run_id: str, raw: Mapping[str, str | None], now: float) -> dict[str, Any] | None:
    """A table row from the record's :data:`ROW_FIELDS` (None when the record is gone)."""
    state = raw.get("state")
    if not state:
        return None
    started = _num(raw.get("running_at")) or _num(raw.get("preparing_at"))
    ended = _num(raw.get(f"{state}_at")) if state in TERMINAL else None
    duration = None if started is None else max(0.0, (ended or now) - started)
    return {
        "run_id": run_id, "state": state, "name": raw.get("name") or "",
        "queue": raw.get("queue") or "", "worker": raw.get("worker") or "",
        "user": raw.get("user") or "", "tags": _json_list(raw.get("tags")),
        "attempt": _int(raw.get("attempt")), "exit_code": _int(raw.get("exit_code")),
        "error": raw.get("error") or "", "submitted_at": _num(raw.get("submitted_at")),
        "started_at": started, "ended_at": ended, "duration": duration,
        "gpus": _json_list(raw.get("gpus")),
        "waiting": (raw.get("waiting") or "") if state == QUEUED else "",
    }  # fmt: skip


def matches(row: Mapping[str, Any], filters: Mapping[str, str]) -> bool:
    """Whether a row passes every filter (``name`` by substring, ``tag`` among its tags)."""
    for key, wanted in filters.items():
        if key == "tag":
            if wanted not in row.get("tags", []):
                return False
        elif key == "name":
            if wanted.lower() not in str(row.get("name", "")).lower():
                return False
        elif str(row.get(key, "")) != wanted:
            return False
    return True


def _add_metrics(store: RunStore, rows: list[dict[str, Any]], names: Iterable[str]) -> None:
    """Each row's last value of each metric in ``names`` (among its last 1,000 reports)."""
    wanted = set(names)
    pipe = store.r.pipeline(transaction=False)
    for r in rows:
        pipe.xrevrange(store.keys.metrics(r["run_id"]), count=1000)
    for r, entries in zip(rows, pipe.execute(), strict=True):
        last: dict[str, float] = {}
        for _, data in entries:
            name = data.get("n", "")
            if name in wanted and name not in last:
                last[name] = _num(data.get("v"))  # type: ignore[assignment]
        r["metrics"] = {n: last.get(n) for n in names}


def _num(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    number = _num(value)
    return None if number is None else int(number)


def _json_list(value: str | None) -> list[Any]:
    if not value:
        return []
    try:
        got = json.loads(value)
    except ValueError:
        return [value]
    return got if isinstance(got, list) else [got]
