"""The cluster sweep (run by celery beat): lost workers, lost runs, old worker records.

- a worker whose heartbeat expired, and that did not stop cleanly, is marked ``lost``;
- a run in a worker's current-run set whose claim expired (its pool process or the whole worker
  died) is put back on its queue with the same run id while it has attempts left, else marked
  ``lost`` with an error naming the worker (see :mod:`.requeue`; without a ``resend`` it is marked
  lost at once);
- a dead worker's messages of runs it took but never claimed go back on their queues at once,
  not after the broker's visibility timeout (see :mod:`.reserved`; Redis broker);
- parked runs that may go now (their user's turn, under quota) and cancelled parked runs are
  sent again, a batch of :data:`WAKE_BATCH` per queue (see :mod:`.fairorder`);
- an ended run whose outputs were uploading in the background when the process doing it died
  (its upload mark expired) gets ``artifacts: failed``, naming where its outputs still are (see
  :mod:`.uploads`);
- workers not seen for :data:`RETENTION` seconds are forgotten with their history;
- runs and searches that ended more than ``run_retention_days`` ago are deleted, a bounded batch
  at most every :data:`RETENTION_EVERY` seconds across the cluster (see :mod:`.retention`): the
  sweep itself runs every couple of seconds, so that a dead worker's runs come back promptly.

Every step is idempotent (a lost worker or run is marked once, a terminal run never changes), and a
short Redis lock keeps two beats from sweeping at the same moment.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from . import retention, state, uploads
from .fairorder import FairOrder, send_again
from .requeue import (
    Finished,
    Resend,
    Revoked,
    celery_finished,
    celery_resend,
    celery_revoked,
    recover,
)
from .reserved import Reservations, Restore, kombu_restore
from .settings import Settings
from .state import RunStore
from .workers import Seen, WorkerRegistry

logger = logging.getLogger(__name__)

RETENTION = 7 * 86400  #: seconds a worker that is gone stays listed
RETENTION_EVERY = 60.0  #: seconds between two deletions of old runs, whoever sweeps
WAKE_BATCH = 16  #: parked runs sent again per queue and sweep


def sweep(
    store: RunStore,
    registry: WorkerRegistry,
    lock_ttl: float = 10.0,
    resend: Resend | None = None,
    revoked: Revoked | None = None,
    retention_days: float = Settings.run_retention_days,
    retention_batch: int = retention.BATCH,
    finished: Finished | None = None,
    retention_every: float = RETENTION_EVERY,
    restore: Restore | None = None,
    fair: FairOrder | None = None,
) -> dict[str, Any]:
    """Sweep once; returns what changed (``skipped`` when another sweep holds the lock).

    Runs and searches that ended more than ``retention_days`` ago are deleted (0 keeps everything),
    by at most one sweep per ``retention_every`` seconds.
    """
    token = f"{socket.gethostname()}:{os.getpid()}:{time.time()}"
    if not store.r.set(store.keys.sweep_lock(), token, nx=True, px=max(1, int(lock_ttl * 1000))):
        return {"skipped": True}
    lost_workers: list[str] = []
    found: dict[str, list[str]] = {"lost_runs": [], "requeued_runs": [], "aborted_runs": [],
                                   "restored_runs": []}  # fmt: skip
    reservations = Reservations(store.r, store.keys)
    fleet = registry.survey(registry.names())
    claimed = _claimed(store, [run_id for seen in fleet for run_id in seen.runs])
    for seen in fleet:
        if not seen.alive and not seen.gone and registry.mark_lost(seen.name):
            logger.warning("worker %s is lost: its heartbeat expired", seen.name)
            lost_workers.append(seen.name)
        if not seen.alive and seen.holds and restore is not None:
            found["restored_runs"] += _hand_back(reservations, seen.name, restore)
        orphans = [run_id for run_id in seen.runs if run_id not in claimed]
        for run_id, what in _orphan_runs(store, registry, seen, orphans, resend, revoked, finished):
            found[_BUCKET[what]].append(run_id)
    if fair is not None and resend is not None:
        found["woken_runs"] = _wake(fair, resend)
    found["failed_uploads"] = _reap_uploads(store)
    forgotten = registry.trim(time.time() - RETENTION)
    expired = {"expired_runs": 0, "expired_searches": 0}
    if _due(store, token, retention_every):
        expired = _expire(store, retention_days, retention_batch)
    return {"lost_workers": lost_workers, **found, "forgotten": forgotten, **expired}


#: the parts of a sweep's result that say it changed something (logged as a warning)
CHANGES = ("lost_workers", "lost_runs", "requeued_runs", "aborted_runs", "restored_runs",
           "failed_uploads")  # fmt: skip


def sweeper(
    app: Any,
    settings: Settings,
    store: RunStore,
    registry: WorkerRegistry,
    fair: FairOrder | None = None,
) -> Callable[[], dict[str, Any]]:
    """The cluster sweep as both beat's scheduled task and the workers' chore run it: runs sent
    again through ``app``, revoked runs and the outcomes of ended runs read and stored through its
    result backend, the lock and retention from ``settings``; a sweep that changed anything is
    logged."""
    resend, revoked, finished = celery_resend(app), celery_revoked(app), celery_finished(app, store)
    restore = kombu_restore(app)

    def run() -> dict[str, Any]:
        result = sweep(store, registry, lock_ttl=settings.sweep_interval / 2, resend=resend,
                       revoked=revoked, retention_days=settings.run_retention_days,
                       finished=finished, restore=restore, fair=fair)  # fmt: skip
        if any(result.get(k) for k in CHANGES):
            logger.warning("sweep: %s", result)
        return result

    return run


def _wake(fair: FairOrder, resend: Resend) -> list[str]:
    try:
        return send_again(fair, resend, fair.wake(WAKE_BATCH, scan=True))
    except Exception as err:  # Redis away: the next sweep tries again
        logger.warning("sweep: could not send parked runs again: %s", err)
        return []


def _hand_back(reservations: Reservations, name: str, restore: Restore) -> list[str]:
    try:
        return reservations.hand_back(name, restore)
    except Exception as err:  # the broker away: the next sweep tries again
        logger.warning("sweep: could not hand back the messages worker %s held: %s", name, err)
        return []


def _reap_uploads(store: RunStore) -> list[str]:
    try:
        return uploads.reap(store)
    except Exception as err:  # Redis away: the next sweep looks again
        logger.warning("sweep: could not look at background uploads: %s", err)
        return []


def _due(store: RunStore, token: str, every: float) -> bool:
    """Whether this sweep deletes old runs (one sweep per ``every`` seconds does)."""
    if every <= 0:
        return True
    return bool(store.r.set(store.keys.retention_lock(), token, nx=True, px=int(every * 1000)))


def _expire(store: RunStore, days: float, batch: int) -> dict[str, int]:
    """Delete runs and searches past their retention; how many of each went."""
    try:
        runs = retention.expire_runs(store, days, batch=batch)
        searches = retention.expire_searches(store, days, batch=batch)
    except Exception as err:  # retention must never stop the sweep's real work
        logger.warning("sweep: deleting old runs failed: %s", err)
        return {"expired_runs": 0, "expired_searches": 0}
    if runs or searches:
        logger.info("sweep: deleted %d runs and %d searches older than %g days",
                    len(runs), len(searches), days)  # fmt: skip
    return {"expired_runs": len(runs), "expired_searches": len(searches)}


_BUCKET = {state.LOST: "lost_runs", state.QUEUED: "requeued_runs", state.ABORTED: "aborted_runs"}


def _claimed(store: RunStore, run_ids: list[str]) -> set[str]:
    """Those of ``run_ids`` whose claim is held (one round trip)."""
    pipe = store.r.pipeline(transaction=False)
    for run_id in run_ids:
        pipe.exists(store.keys.claim(run_id))
    return {run_id for run_id, held in zip(run_ids, pipe.execute(), strict=True) if held}


def _orphan_runs(
    store: RunStore,
    registry: WorkerRegistry,
    seen: Seen,
    orphans: list[str],
    resend: Resend | None,
    revoked: Revoked | None,
    finished: Finished | None = None,
) -> list[tuple[str, str]]:
    done = []
    for run_id in orphans:
        try:
            why = _why(seen.name, seen.alive)
            what = recover(store, run_id, why, resend, revoked, finished)
        except Exception as err:  # one bad record must not stop the sweep
            logger.warning("sweep: could not recover run %s: %s", run_id, err)
            what = ""
        registry.remove_run(seen.name, run_id)
        if what:
            logger.warning("run %s of worker %s: %s", run_id, seen.name, what)
            done.append((run_id, what))
    return done


def _why(name: str, alive: bool) -> str:
    if alive:
        return f"worker {name} stopped renewing the run's claim (its pool process died)"
    return f"worker {name} was lost (its heartbeat and the run's claim expired)"
