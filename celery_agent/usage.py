"""Who uses the fleet: runs grouped by their user or project, as plain rows the CLI renders."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import state
from .state import RunStore

#: what runs can be grouped by (fields of the run record)
GROUPS = ("user", "project")


def matches(record: dict[str, Any], user: str | None, project: str | None) -> bool:
    """Whether a run record belongs to ``user`` and ``project`` (None: any)."""
    return (user is None or record.get("user") == user) and (
        project is None or record.get("project") == project
    )


def group_runs(records: Iterable[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """One row per user (or project) of ``records``: runs queued, active (preparing or running)
    and ended, each end state counted; the busiest group first. A run without one is '-'."""
    if by not in GROUPS:
        raise ValueError(f"runs group by {' or '.join(GROUPS)}, not {by!r}")
    rows: dict[str, dict[str, Any]] = {}
    for record in records:
        name = str(record.get(by) or "-")
        row = rows.setdefault(name, {by: name, "queued": 0, "active": 0, "ended": {}})
        st = str(record.get("state") or "")
        if st == state.QUEUED:
            row["queued"] += 1
        elif st in state.ACTIVE:
            row["active"] += 1
        elif st in state.TERMINAL:
            row["ended"][st] = row["ended"].get(st, 0) + 1
    return sorted(rows.values(), key=lambda r: (-r["active"], -r["queued"], r[by]))


def ended_text(ended: dict[str, int]) -> str:
    """'12 succeeded, 1 failed' from a row's end-state counts; '-' when none ended."""
    if not ended:
        return "-"
    return ", ".join(f"{n} {st}" for st, n in sorted(ended.items(), key=lambda kv: -kv[1]))


def current(
    store: RunStore,
    by: str = "user",
    user: str | None = None,
    project: str | None = None,
    scan: int = 50_000,
) -> list[dict[str, Any]]:
    """Runs waiting and active now, grouped ``by`` user or project (of the newest ``scan`` runs,
    only those of ``user`` and ``project`` when given). Only the fields it groups by are read,
    never whole records (a spec with its diff can be large), a batch per round trip."""
    live = [row for row in _owners(store, scan) if row["state"] in LIVE]
    return group_runs([row for row in live if matches(row, user, project)], by)


#: the states of runs that wait or run now
LIVE = state.ACTIVE | {state.QUEUED}
_BATCH = 2000


def _owners(store: RunStore, scan: int) -> Iterable[dict[str, Any]]:
    """State, user and project of the newest ``scan`` runs, newest first."""
    fields = ("state", "user", "project")
    for start in range(0, scan, _BATCH):
        ids = store.r.zrevrange(store.keys.runs(), start, min(start + _BATCH, scan) - 1)
        pipe = store.r.pipeline(transaction=False)
        for run_id in ids:
            pipe.hmget(store.keys.run(run_id), fields)
        for values in pipe.execute():
            if values[0] is not None:
                yield dict(zip(fields, values, strict=True))
        if len(ids) < _BATCH:
            return
