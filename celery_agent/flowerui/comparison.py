"""Runs side by side: their settings and params (rows that differ marked), their metric curves.

Runs are named by id, unique id prefix or unique name (as everywhere, see :func:`..lookup.find_run`);
a comparison takes 2 to 10 of them. A run's params are the ones it ran with (recorded when it ran)
over the ones its spec asked for.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import RequestError, UnknownRunError
from ..lookup import find_run
from .series import run_series

if TYPE_CHECKING:
    from ..state import RunStore

MIN_RUNS, MAX_RUNS = 2, 10
#: points each run's series keeps in a comparison (downsampled beyond)
COMPARE_POINTS = 1000
#: the run settings compared above the params
FIELDS = ("name", "state", "queue", "repo", "commit", "entry", "args", "executor")
_HOW = "give ids=ID1,ID2,... (2 to 10 run ids, unique id prefixes or names, comma-separated)"


def parse_refs(text: str | None) -> list[str]:
    """The run references in ``text`` (commas or spaces between them; repeats dropped); raises
    RequestError unless there are 2 to 10."""
    refs = list(dict.fromkeys(r for r in re.split(r"[,\s]+", text or "") if r))
    if len(refs) < MIN_RUNS:
        raise RequestError(f"a comparison needs at least {MIN_RUNS} runs, got {len(refs)}", _HOW)
    if len(refs) > MAX_RUNS:
        raise RequestError(f"a comparison takes at most {MAX_RUNS} runs, got {len(refs)}", _HOW)
    return refs


def resolve(store: RunStore, refs: Iterable[str]) -> list[str]:
    """The run ids ``refs`` name; UnknownRunError naming every reference that names no single run,
    RequestError when two name the same run and fewer than two runs are left."""
    ids, problems = [], []
    for ref in refs:
        try:
            ids.append(find_run(store, ref))
        except UnknownRunError as err:
            problems.append(err.message)
    if problems:
        raise UnknownRunError("; ".join(problems), "check the ids on the Runs page or with `celery-agent ls`")  # fmt: skip
    ids = list(dict.fromkeys(ids))
    if len(ids) < MIN_RUNS:
        raise RequestError("those references all name the same run", _HOW)
    return ids


def compare_data(store: RunStore, text: str | None, limit: int = COMPARE_POINTS) -> dict[str, Any]:
    """The comparison of the runs ``text`` names (see :func:`parse_refs`)::

        {"runs": [{"id", "name", "state"}], "fields": [row], "params": [row],
         "metrics": {metric: {run_id: [[step, value], ...]}}}

    where a row is ``{"name", "values": [one per run, None where absent], "differs": bool}``."""
    ids = resolve(store, parse_refs(text))
    records = [store.get(run_id) for run_id in ids]
    runs = [{"id": rec["run_id"], "name": rec.get("name") or "", "state": rec.get("state") or ""}
            for rec in records]  # fmt: skip
    metrics: dict[str, dict[str, Any]] = {}
    for run_id in ids:
        for name, points in run_series(store, run_id, limit)["series"].items():
            metrics.setdefault(name, {})[run_id] = points
    return {
        "runs": runs,
        "fields": rows(FIELDS, [_settings(rec) for rec in records]),
        "params": rows(_names(_params(rec) for rec in records), [_params(rec) for rec in records]),
        "metrics": metrics,
    }


def rows(names: Iterable[str], values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per name: each run's value (None where it has none) and whether they differ."""
    out = []
    for name in names:
        cells = [v.get(name) for v in values]
        seen = {json.dumps([name in v, v.get(name)], sort_keys=True, default=str) for v in values}
        out.append({"name": name, "values": cells, "differs": len(seen) > 1})
    return out


def _names(dicts: Iterable[dict[str, Any]]) -> list[str]:
    """Every key, in order of first appearance."""
    return list(dict.fromkeys(k for d in dicts for k in d))


def _params(record: dict[str, Any]) -> dict[str, Any]:
    spec = record.get("spec") or {}
    used = record.get("params") if isinstance(record.get("params"), dict) else {}
    return {**(spec.get("params") or {}), **(used or {})}


def _settings(record: dict[str, Any]) -> dict[str, Any]:
    spec = record.get("spec") or {}
    args = spec.get("args")
    out = {
        "name": record.get("name"), "state": record.get("state"), "queue": record.get("queue"),
        "repo": spec.get("repo"), "commit": record.get("commit") or spec.get("commit"),
        "entry": spec.get("entry"), "args": " ".join(map(str, args)) if args else None,
        "executor": spec.get("executor"),
    }  # fmt: skip
    return {k: v for k, v in out.items() if v not in (None, "")}
