"""Finding a run from what a person types: its id, a prefix of its id, or its name."""

from __future__ import annotations

import time

from .errors import UnknownRunError
from .state import RunStore

#: how many of the newest runs a prefix or a name is looked for in
SEARCHED = 5000
#: how many candidates an ambiguous reference lists
LISTED = 10


def find_run(store: RunStore, ref: str) -> str:
    """The id of the one run that ``ref`` names: an id, a unique id prefix, or a unique name.

    Raises :class:`UnknownRunError` when none matches, or when several do (listing them)."""
    ref = ref.strip()
    if not ref:
        raise UnknownRunError("no run named ''", "give a run id, an id prefix or a run's name")
    store.ping()  # (a StateError saying where Redis was expected, when it is not there)
    r, keys = store.r, store.keys
    if r.exists(keys.run(ref)):
        return ref
    ids = [str(i) for i in r.zrevrange(keys.runs(), 0, SEARCHED - 1)]
    by_id = [i for i in ids if i.startswith(ref)]
    by_name = [i for i in _named(store, ids, ref) if i not in by_id]
    found = by_id + by_name
    if len(found) == 1:
        return found[0]
    if not found:
        raise UnknownRunError(
            f"no run has the id, id prefix or name {ref!r}",
            "check it with `celery-agent ls`",
        )
    raise UnknownRunError(
        f"{len(found)} runs match {ref!r}: {_listing(store, found[:LISTED])}"
        + (f" and {len(found) - LISTED} more" if len(found) > LISTED else ""),
        "give more characters of the id, or the full id",
    )


def _named(store: RunStore, ids: list[str], name: str) -> list[str]:
    """The runs among ``ids`` whose name is ``name`` (newest first)."""
    pipe = store.r.pipeline(transaction=False)
    for run_id in ids:
        pipe.hget(store.keys.run(run_id), "name")
    names = pipe.execute() if ids else []
    return [i for i, n in zip(ids, names, strict=True) if n == name]


def _listing(store: RunStore, ids: list[str]) -> str:
    """'abc123 (train.py, succeeded, 12-03 13:05), ...' for each id."""
    pipe = store.r.pipeline(transaction=False)
    for run_id in ids:
        pipe.hmget(store.keys.run(run_id), "name", "state", "submitted_at")
    rows = pipe.execute()
    out = []
    for run_id, (name, state, at) in zip(ids, rows, strict=True):
        when = time.strftime("%m-%d %H:%M", time.localtime(float(at))) if at else "?"
        out.append(f"{run_id} ({name or '-'}, {state or '?'}, {when})")
    return ", ".join(out)
