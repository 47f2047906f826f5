"""Retention: runs that ended more than ``run_retention_days`` ago are deleted, in Redis and on disk.

In Redis (:func:`expire_runs`, called by the beat sweep): such a run loses its record, log stream,
metrics stream, claim, cancel flag, secrets and its entry in ``{p}:runs``; a search that ended that long ago
loses its record, trials, cancel flag and its entry in ``{p}:searches`` (:func:`expire_searches`).
Never deleted, whatever their age: runs that are queued, preparing or running, and the trials of a
search that is still running. Each call looks at one window of at most ``batch`` old entries and
remembers where the next one starts (``{p}:retention:runs``, ``{p}:retention:searches``), so a
backlog is worked off over several sweeps and none holds Redis for long; streams go with UNLINK,
which frees their memory off Redis's main thread.

A run that goes takes its artifacts with it: what it kept in the artifact store
(``{root}/runs/{id}/``, the root its record names) is deleted first, in parallel threads; a store
that cannot be reached is logged and the run goes anyway. A run marked ``keep``
(``celery-agent keep RUN``) is never deleted, nor its artifacts, nor its run folder.
:func:`delete_run` deletes one run now (``celery-agent delete RUN``).

On disk (:func:`prune_run_dirs`, for each worker): run folders under ``runs_dir`` (log file,
output) untouched for longer than the retention, unless Redis says their run is still active.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import state
from .artifacts import ArtifactStore
from .errors import ConfigError, StateError
from .settings import Settings
from .state import RunStore

logger = logging.getLogger(__name__)

DAY = 86400.0
BATCH = 500  #: old index entries one sweep looks at (runs, and searches, each)
KEEP = frozenset({state.QUEUED, *state.ACTIVE})  #: states whose runs are never deleted
_ENDS = tuple(f"{s}_at" for s in sorted(state.TERMINAL))
_ROW = ("state", "name", "keep", "artifacts", *_ENDS)  #: what retention reads of a run record
STORE_THREADS = 8  #: runs whose artifacts are deleted at once
_TRIAL = re.compile(r"^search-(?P<search>.+)-t\d+$")  #: the name a search gives its trials


def expire_runs(store: RunStore, days: float, now: float | None = None,
                batch: int = BATCH) -> list[str]:  # fmt: skip
    """Delete runs that ended more than ``days`` ago (one window of ``batch``); their ids."""
    if days <= 0:
        return []
    cutoff = (now or time.time()) - days * DAY
    offset, ids = _window(store, store.keys.runs(), "runs", cutoff, batch)
    pipe = store.r.pipeline(transaction=False)
    for run_id in ids:
        pipe.hmget(store.keys.run(run_id), *_ROW)
    rows = [dict(zip(_ROW, r, strict=True)) for r in pipe.execute()]
    running = _running_searches(store, [row["name"] for row in rows])
    gone = [i for i, row in zip(ids, rows, strict=True) if _expired(row, cutoff, running)]
    by_id = dict(zip(ids, rows, strict=True))
    remove_artifacts([(run_id, by_id[run_id]["artifacts"]) for run_id in gone])
    _delete_runs(store, gone)
    _advance(store, "runs", offset, len(ids) - len(gone), len(ids) == batch)
    return gone


def expire_searches(store: RunStore, days: float, now: float | None = None,
                    batch: int = BATCH) -> list[str]:  # fmt: skip
    """Delete searches that ended more than ``days`` ago (one window of ``batch``); their ids."""
    if days <= 0:
        return []
    keys, cutoff = store.keys, (now or time.time()) - days * DAY
    offset, ids = _window(store, keys.searches(), "searches", cutoff, batch)
    pipe = store.r.pipeline(transaction=False)
    for search_id in ids:
        pipe.hmget(keys.search(search_id), "state", "finished_at")
    gone = [
        search_id
        for search_id, (st, finished) in zip(ids, pipe.execute(), strict=True)
        if st is None or (st != "running" and _number(finished, 0.0) < cutoff)
    ]
    pipe = store.r.pipeline(transaction=False)
    for search_id in gone:
        pipe.unlink(keys.search(search_id), keys.search_trials(search_id),
                    keys.search_cancel(search_id))  # fmt: skip
    if gone:
        pipe.zrem(keys.searches(), *gone)
    pipe.execute()
    _advance(store, "searches", offset, len(ids) - len(gone), len(ids) == batch)
    return gone


def delete_run(store: RunStore, run_id: str, root: str | None = None) -> bool:
    """Delete one ended run now: its artifacts (from ``root``, default the recorded root), its
    record and every key it has; False when it kept no artifacts. A run that is queued or active,
    marked ``keep``, or whose outputs still upload, is refused with a StateError saying what to
    do."""
    row = dict(zip(_ROW, store.r.hmget(store.keys.run(run_id), *_ROW), strict=True))
    if row["state"] in KEEP:
        raise StateError(f"run {run_id} is {row['state']}",
                         f"cancel it first: celery-agent cancel {run_id}")  # fmt: skip
    if _kept(row):
        raise StateError(f"run {run_id} is marked keep",
                         f"celery-agent keep {run_id} --off, then delete it")  # fmt: skip
    if _json(row["artifacts"]).get("status") == "uploading":
        raise StateError(f"the outputs of run {run_id} are still uploading",
                         "delete it once the upload has ended (celery-agent show says)")  # fmt: skip
    had = _remove_artifacts(run_id, row["artifacts"], root, strict=True)
    _delete_runs(store, [run_id])
    return had


def set_keep(store: RunStore, run_id: str, keep: bool = True) -> None:
    """Mark a run ``keep`` (retention never deletes it, nor its artifacts) or unmark it."""
    if keep:
        store.update(run_id, keep="1")
    else:
        store.r.hdel(store.keys.run(run_id), "keep")


def remove_artifacts(runs: Sequence[tuple[str, str | None]]) -> None:
    """Delete what each ``(run_id, recorded artifacts JSON)`` kept in its artifact store, in
    parallel; a failure is logged, never raised (the run goes anyway)."""
    if runs:
        with ThreadPoolExecutor(min(STORE_THREADS, len(runs))) as pool:
            list(pool.map(lambda run: _remove_artifacts(*run), runs))


def _remove_artifacts(run_id: str, recorded: str | None, root: str | None = None,
                      strict: bool = False) -> bool:  # fmt: skip
    kept = _json(recorded)
    root = root or kept.get("root")
    if not root:
        return False
    try:
        return ArtifactStore(root).remove(run_id)
    except Exception as err:
        if strict:
            raise ConfigError(
                f"could not delete the artifacts of run {run_id}: {err}",
                "pass the artifact root as this machine reaches it (--root)",
            ) from err
        logger.warning("could not delete the artifacts of run %s in %s: %s", run_id, root, err)
        return False


def prune_run_dirs(runs_dir: Path, store: RunStore, days: float,
                   now: float | None = None) -> list[str]:  # fmt: skip
    """Remove run folders untouched for ``days`` whose run is not active; the run ids removed.

    Nothing is removed when Redis cannot say which runs are active (the error propagates).
    """
    if days <= 0 or not runs_dir.is_dir():
        return []
    cutoff = (now or time.time()) - days * DAY
    old = [p for p in runs_dir.iterdir() if p.is_dir() and _last_touched(p) < cutoff]
    pipe = store.r.pipeline(transaction=False)
    for path in old:
        pipe.hmget(store.keys.run(path.name), "state", "keep")
    removed = []
    for path, (run_state, keep) in zip(old, pipe.execute(), strict=True):
        if run_state not in KEEP and not _kept({"keep": keep}):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def prune_this_machine(settings: Settings, store: RunStore) -> list[str]:
    """:func:`prune_run_dirs` with a worker's ``settings`` and ``store``, logging what it did; for
    a worker to call now and then (in the background). Errors are logged, never raised."""
    try:
        removed = prune_run_dirs(settings.runs_dir, store, settings.run_retention_days)
    except Exception as err:
        logger.warning("pruning old run folders failed: %s", err)
        return []
    if removed:
        logger.info("removed %d run folders older than %g days", len(removed),
                    settings.run_retention_days)  # fmt: skip
    return removed


# -- helpers ------------------------------------------------------------------------------------
def _window(store: RunStore, index: str, name: str, cutoff: float,
            batch: int) -> tuple[int, list[str]]:  # fmt: skip
    """(offset, ids): the next ``batch`` entries of ``index`` scored before ``cutoff``."""
    offset = int(store.r.get(store.keys.retention_cursor(name)) or 0)
    ids = store.r.zrangebyscore(index, "-inf", f"({cutoff}", start=offset, num=batch)
    return offset, list(ids)


def _advance(store: RunStore, name: str, offset: int, kept: int, full: bool) -> None:
    """Start the next window after the entries kept in this one, or from the oldest again."""
    store.r.set(store.keys.retention_cursor(name), offset + kept if full else 0)


def _expired(row: dict[str, Any], cutoff: float, running_searches: set[str]) -> bool:
    if row["state"] is None:  # an index entry whose record is gone: clean up after it
        return True
    if row["state"] not in state.TERMINAL or _kept(row):
        return False
    trial = _TRIAL.match(row["name"] or "")
    if trial and trial["search"] in running_searches:
        return False
    return _number(row.get(f"{row['state']}_at"), 0.0) < cutoff


def _running_searches(store: RunStore, names: Sequence[str | None]) -> set[str]:
    found = {m["search"] for n in names if n and (m := _TRIAL.match(n))}
    if not found:
        return set()
    keys, ordered = store.keys, sorted(found)
    pipe = store.r.pipeline(transaction=False)
    for search_id in ordered:
        pipe.hget(keys.search(search_id), "state")
    return {s for s, st in zip(ordered, pipe.execute(), strict=True) if st == "running"}


def _delete_runs(store: RunStore, run_ids: Sequence[str]) -> None:
    if not run_ids:
        return
    k = store.keys
    pipe = store.r.pipeline(transaction=False)
    for run_id in run_ids:  # secrets: runenv keeps a run's secret values there until it ends
        pipe.unlink(k.run(run_id), k.log(run_id), k.metrics(run_id), k.claim(run_id),
                    k.abort(run_id), k.secrets(run_id), k.log_sent(run_id))  # fmt: skip
    pipe.zrem(k.runs(), *run_ids)
    pipe.execute()


def _last_touched(path: Path) -> float:
    """The newest modification time of the folder and what it directly holds."""
    times = [path.stat().st_mtime]
    for entry in path.iterdir():
        try:
            times.append(entry.stat().st_mtime)
        except OSError:
            continue
    return max(times)


def _number(text: str | None, default: float) -> float:
    try:
        return float(text) if text else default
    except ValueError:
        return default


def _kept(row: dict[str, Any]) -> bool:
    return str(row.get("keep") or "") in ("1", "true")


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
