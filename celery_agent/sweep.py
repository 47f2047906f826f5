"""The cluster sweep (run by celery beat): lost workers, lost runs, old worker records.

- a worker whose heartbeat expired, and that did not stop cleanly, is marked ``lost``;
- a run in a worker's current-run set whose claim expired is marked ``lost`` with an error naming
  the worker (its pool process or the whole worker died; putting it back on its queue is not done
  here);
- workers not seen for :data:`RETENTION` seconds are forgotten with their history.

Every step is idempotent (a lost worker or run is marked once, a terminal run never changes), and a
short Redis lock keeps two beats from sweeping at the same moment.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from . import state
from .state import RunStore
from .workers import WorkerRegistry

logger = logging.getLogger(__name__)

RETENTION = 7 * 86400  #: seconds a worker that is gone stays listed


def sweep(store: RunStore, registry: WorkerRegistry, lock_ttl: float = 10.0) -> dict[str, Any]:
    """Sweep once; returns what changed (``skipped`` when another sweep holds the lock)."""
    token = f"{socket.gethostname()}:{os.getpid()}:{time.time()}"
    if not store.r.set(store.keys.sweep_lock(), token, nx=True, px=max(1, int(lock_ttl * 1000))):
        return {"skipped": True}
    lost_workers, lost_runs = [], []
    for name in registry.names():
        alive = registry.is_alive(name)
        if not alive and registry.mark_lost(name):
            logger.warning("worker %s is lost: its heartbeat expired", name)
            lost_workers.append(name)
        lost_runs += _lost_runs(store, registry, name, alive)
    forgotten = registry.trim(time.time() - RETENTION)
    return {"lost_workers": lost_workers, "lost_runs": lost_runs, "forgotten": forgotten}


def _lost_runs(store: RunStore, registry: WorkerRegistry, name: str, alive: bool) -> list[str]:
    lost = []
    for run_id in registry.current_runs(name):
        if store.r.exists(store.keys.claim(run_id)):
            continue
        old = store.transition(run_id, state.LOST, error=_why(name, alive), error_stage="run")
        registry.remove_run(name, run_id)
        if old in state.ACTIVE:
            logger.warning("run %s is lost: %s", run_id, _why(name, alive))
            lost.append(run_id)
    return lost


def _why(name: str, alive: bool) -> str:
    if alive:
        return f"worker {name} stopped renewing the run's claim (its pool process died)"
    return f"worker {name} was lost (its heartbeat and the run's claim expired)"
