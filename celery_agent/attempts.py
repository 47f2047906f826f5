"""Who may run a run: admission of a delivery, claim holders, and leftovers of dead attempts.

A claim's value is a holder token ``worker|host|pid`` (the pool process running the run). A
delivery runs only when the run has not ended and it gets the claim, or takes the claim over from a
holder on this machine whose process is gone (a pool process that was killed: Celery redelivers its
message at once). Anything else is a duplicate and is dropped.

The user processes of an attempt whose runner died are found by the ``CELERY_AGENT_RUN_ID`` variable
in their environment (``/proc/<pid>/environ``), checked against the run's record (started on this
machine, in this store) and killed: by a worker when it starts and now and
then after, and by the delivery that takes a run over.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from dataclasses import dataclass
from typing import Any

import psutil

from . import state
from .state import Rider, RunStore

logger = logging.getLogger(__name__)

RUN_ID_ENV = "CELERY_AGENT_RUN_ID"


class DuplicateRun(Exception):
    """The run is held by a live runner, or already ended: this delivery must be dropped."""


def holder_token(worker: str) -> str:
    """The claim value of this process running a run for ``worker``."""
    return f"{worker}|{socket.gethostname()}|{os.getpid()}"


def holder_dead(holder: str) -> bool:
    """Whether ``holder`` is a pool process on this machine that no longer exists."""
    parts = holder.rsplit("|", 2)
    if len(parts) != 3 or parts[1] != socket.gethostname() or not parts[2].isdigit():
        return False
    try:
        return psutil.Process(int(parts[2])).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


@dataclass
class Admission:
    """What a delivery that got the claim knows as it starts."""

    cancelled: bool  #: someone asked to cancel the run
    draining: bool  #: the worker drains
    record: dict[str, Any]  #: its record's state, attempt, lost_attempts and preparing_at, read
    #: after the claim (empty when the run is unknown)
    claimed: bool = True  #: False for a run cancelled before it started: it ends, unclaimed


def admit(
    store: RunStore, run_id: str, token: str, ttl: float, worker: str, ride: Rider | None = None
) -> Admission:
    """Claim the run for ``token`` (one round trip, which ``ride`` shares), or raise
    :class:`DuplicateRun`. A run cancelled before it ever started is not claimed: the delivery
    only ends it aborted."""
    got, holder, cancelled, draining, record = store.claim_view(run_id, token, ttl, worker, ride)
    if cancelled and "preparing_at" not in record:
        if got:
            store.release_claim(run_id, token)
        return Admission(cancelled, draining, record, claimed=False)
    ended = record.get("state")
    if ended in state.TERMINAL:
        if got:
            store.release_claim(run_id, token)
        raise DuplicateRun(f"run {run_id} already ended as {ended}")
    if not got:
        if not (holder_dead(holder) and store.steal_claim(run_id, holder, token, ttl)):
            raise DuplicateRun(f"run {run_id} is already held by {holder}")
        logger.warning("run %s: its runner %s died; taking the run over", run_id, holder)
    return Admission(cancelled, draining, record)


def stop_if_lost(run_id: str, stop_reason: str | None) -> None:
    """Raise DuplicateRun when the run's stop reason is 'lost': its claim expired while this
    attempt stalled and another runner holds it now, so this attempt ends and writes nothing."""
    if stop_reason == "lost":
        raise DuplicateRun(f"run {run_id}: its claim expired and another runner has it now")


def kill_leftovers(run_id: str) -> list[int]:
    """Kill every process on this machine of ``run_id`` (call as its new runner, before it starts:
    they belong to an attempt whose runner died); returns their pids."""
    procs = [proc for proc, _ in _run_processes(run_id)]
    for proc in procs:
        _kill(proc)
    killed = [proc.pid for proc in procs]
    if killed:
        logger.warning("run %s: killed %d process(es) of its dead attempt", run_id, len(killed))
    return killed


def reap(store: RunStore, only: str | None = None) -> list[int]:
    """Kill user processes on this machine whose run has no live runner; returns their pids."""
    killed = []
    for proc, run_id in _run_processes(only):
        if _orphaned(store, run_id):
            _kill(proc)
            killed.append(proc.pid)
    if killed:
        logger.warning("killed %d process(es) left by dead runs: %s", len(killed), killed)
    return killed


def _run_processes(only: str | None) -> list[tuple[psutil.Process, str]]:
    found = []
    for proc in psutil.process_iter():
        try:
            run_id = proc.environ().get(RUN_ID_ENV)
        except (psutil.Error, OSError):
            continue
        if run_id and (only is None or run_id == only) and proc.pid != os.getpid():
            found.append((proc, run_id))
    return found


def _orphaned(store: RunStore, run_id: str) -> bool:
    """Whether the run is ours (recorded in this store as started on this machine) and its
    runner is gone. Runs of another deployment sharing the machine are never touched."""
    if store.r.hget(store.keys.run(run_id), "host") != socket.gethostname():
        return False
    holder = store.r.get(store.keys.claim(run_id))
    return holder is None or holder_dead(str(holder))


def _kill(proc: psutil.Process) -> None:
    try:
        pgid = os.getpgid(proc.pid)
        if pgid != os.getpgrp() and pgid == proc.pid:
            os.killpg(pgid, signal.SIGKILL)
        proc.kill()
    except (ProcessLookupError, PermissionError, psutil.Error):
        pass


def count_lost(store: RunStore, run_id: str, record: dict[str, Any]) -> int:
    """Count one more lost attempt of a run found active (its runner died); returns the count."""
    if record.get("state") not in state.ACTIVE:
        return int(record.get("lost_attempts") or 0)
    return store.count_lost_attempt(run_id)
