"""Worker bootsteps: the GPU options (--gpus, --dynamic, --cpu-only) and the heartbeat thread.

The heartbeat runs in the worker's main process, on its own daemon thread, so it keeps flowing
while every pool slot runs a long job. Each beat writes the worker's record (name, host, pid, start
time, queues, GPU mode and GPUs, current runs, dynamic GPU leases) and a machine snapshot to Redis
(see :mod:`.workers`). On a warm shutdown the worker is marked stopped; a worker that dies simply
stops beating and the sweep marks it lost. A worker that starts kills the user processes a dead
predecessor on this machine left running, and looks again every ``REAP_EVERY`` beats (see
:mod:`.attempts`); SIGTERM drains it (see :mod:`.drain`). Each pool process watches the main
process and, should it die, kills its runs and exits so they are re-queued (see :mod:`.orphan`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import bootsteps
from celery.signals import (
    task_received,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from . import attempts, digests, orphan, retention, uploads
from .artifact_store import default_url, probe, safe_url
from .drain import Drain
from .drain import install as install_drain
from .fairorder import fair_order
from .gpus import WORKER_GPUS_ENV, WorkerGpus
from .monitoring import Monitor
from .reserved import RUN_TASK, Reservations, held_runs, kombu_restore
from .settings import Settings
from .sweep import sweeper
from .workers import WorkerRegistry

logger = logging.getLogger(__name__)

REAP_EVERY = 6  #: heartbeats between looks for processes of dead runs on this machine
PRUNE_EVERY = 86400.0  #: seconds between looks for run folders past the retention
ENV_CACHE_EVERY = 6  #: heartbeats between measures of the environment cache's size
STORE_CHECK_EVERY = 300.0  #: seconds between checks that the artifact store can be written


class Heartbeat:
    """Writes the worker's record every ``interval`` seconds from a daemon thread."""

    def __init__(self, registry: WorkerRegistry, record: dict[str, Any], interval: float,
                 history: int, leases: Any = None) -> None:  # fmt: skip
        self.registry, self.record, self.interval, self.history = (
            registry,
            record,
            interval,
            history,
        )
        self.leases = leases
        self._chores: list[_Chore] = []  #: see add_chore
        self.monitor = Monitor()
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ca-heartbeat", daemon=True)

    def start(self) -> None:
        """Beat now, then every interval."""
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and record a clean shutdown."""
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
        try:
            self.registry.stopped(self.record["name"], self.record.get("hostname"))
        except Exception as err:
            logger.warning("could not record the worker's shutdown: %s", err)

    def _loop(self) -> None:
        while True:
            try:
                self.beat()
            except Exception as err:  # Redis down: keep trying, the record's TTL tells the rest
                logger.warning("heartbeat failed: %s", err)
            self._run_chores()
            if self._stop.wait(self.interval):
                return

    def add_chore(self, what: str, every: float, chore: Callable[[], object]) -> None:
        """Run ``chore`` from the heartbeat thread after the first beat, then every ``every``
        seconds; a failure is logged as "``what`` failed" and never stops the beats."""
        self._chores.append(_Chore(what, every, chore))

    def _run_chores(self) -> None:
        now = time.monotonic()
        for chore in self._chores:
            if now < chore.next_at:
                continue
            chore.next_at = now + chore.every
            try:
                chore.run()
            except Exception as err:
                logger.warning("%s failed: %s", chore.what, err)

    def beat(self) -> dict[str, Any]:
        """Write one heartbeat; returns the record written."""
        name = self.record["name"]
        record = self.record | {
            "at": time.time(),
            "runs": self.registry.current_runs(name),
            "snapshot": self.monitor.snapshot(),
        }
        if self.leases is not None:
            record["leases"] = self.leases.holders([g["uuid"] for g in self.record["gpus"]])
        self.registry.beat(name, record, ttl=3 * self.interval, history=self.history)
        self.beats += 1
        return record


class AgentStep(bootsteps.StartStopStep):
    """Parses the GPU options before the pool starts; runs the heartbeat while the worker runs."""

    label = "celery-agent"
    requires = ("celery.worker.components:Pool",)  # start beating once the pool has forked

    def __init__(self, parent: Any, gpus: str | None = None, dynamic: bool = False,
                 cpu_only: bool = False, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(parent, **kwargs)
        self.gpus = WorkerGpus.from_options(gpus, dynamic, cpu_only)
        os.environ[WORKER_GPUS_ENV] = self.gpus.to_json()  # the pool children read it
        orphan.remember_worker()  # before the pool forks: its processes watch this one
        self.heartbeat: Heartbeat | None = None
        self.drain: Drain | None = None
        logger.info("GPUs: %s", self.gpus.describe())

    def create(self, parent: Any) -> AgentStep:
        """Make the worker also consume the sweep queue (beat sends the cluster sweep there)."""
        from .app import get_settings

        parent.app.amqp.queues.select_add(get_settings().sweep_queue)
        return self

    def start(self, parent: Any) -> None:
        """Start heartbeats."""
        from .app import get_settings, get_store

        settings, store = get_settings(), get_store()
        record = worker_record(parent, self.gpus, settings)
        leases = _leases(store) if self.gpus.mode == "dynamic" else None
        registry = WorkerRegistry(store.r, store.keys)
        self.heartbeat = Heartbeat(registry, record, settings.heartbeat_interval,
                                   settings.heartbeat_history, leases)  # fmt: skip
        hb, interval = self.heartbeat, settings.heartbeat_interval
        hb.add_chore("looking for processes of dead runs", REAP_EVERY * interval,
                     lambda: attempts.reap(store))  # fmt: skip
        hb.add_chore("pruning old run folders", PRUNE_EVERY,
                     lambda: retention.prune_this_machine(settings, store))  # fmt: skip
        hb.add_chore("measuring the env cache", ENV_CACHE_EVERY * interval,
                     _cache_meter(hb.record, settings))  # fmt: skip
        hb.add_chore("checking the artifact store", STORE_CHECK_EVERY,
                     _store_check(hb.record, settings))  # fmt: skip
        # the sweep runs here too, beside beat's scheduled task: it must not wait for a free pool
        # slot, which a fleet busy with long runs or a backlog may not have for hours (the sweep's
        # lock lets one process sweep at a time)
        hb.add_chore("cluster sweep", settings.sweep_interval,
                     sweeper(parent.app, settings, store, registry,
                             fair_order(store, settings) if settings.fair_share else None))  # fmt: skip
        restore = kombu_restore(parent.app)
        if restore is not None:  # (RabbitMQ gives a dead worker's messages back)
            self._note_reserved(parent.hostname, Reservations(store.r, store.keys), restore)
        self.drain = Drain(store, parent.hostname, settings.drain_grace)
        self.drain.reset()
        install_drain(self.drain)
        self._reap_now(store)
        self.heartbeat.start()
        threading.Thread(target=_reap_containers, args=(parent.hostname,), daemon=True).start()
        threading.Thread(
            target=_announce,
            args=(parent.hostname, record["queues"], self.gpus, settings),
            daemon=True,
        ).start()

    def _note_reserved(self, name: str, reservations: Reservations, restore: Any) -> None:
        """Note each run message this worker takes at once, and its whole list with each beat,
        so that the sweep can hand them back should it die before it claims them. First, hand
        back what an earlier process of this name died holding: restarted before the sweep saw
        it dead, its first beat would otherwise forget them (they would wait out the broker's
        visibility timeout)."""
        try:
            reservations.hand_back(name, restore)
        except Exception as err:  # the sweep's turn, should this worker die again
            logger.warning("could not hand back the run messages of %s: %s", name, err)

        def received(request: Any = None, **_: Any) -> None:
            tag = getattr(getattr(request, "message", None), "delivery_tag", None)
            if getattr(request, "type", None) != RUN_TASK or tag is None:  # (name: the shadow)
                return
            try:
                reservations.add(name, request.id, str(tag))
            except Exception as err:  # the next beat notes it
                logger.warning("could not note run message %s: %s", request.id, err)

        task_received.connect(received, weak=False)
        assert self.heartbeat is not None
        self.heartbeat.add_chore("noting run messages held", self.heartbeat.interval,
                                 lambda: reservations.replace(name, held_runs()))  # fmt: skip

    def _reap_now(self, store: Any) -> None:
        try:
            attempts.reap(store)
        except Exception as err:
            logger.warning("looking for processes of dead runs failed: %s", err)

    def stop(self, parent: Any) -> None:
        """Stop heartbeats and mark the worker stopped (a drain timer keeps running: the pool
        stops after this step and waits for the runs)."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None


@worker_process_init.connect
def _watch_worker(**_: Any) -> None:
    """In each pool process: stop its runs and exit should the worker's main process die."""
    orphan.watch()


@worker_process_shutdown.connect
@worker_shutdown.connect
def _finish_uploads(**_: Any) -> None:
    """As a process that ran runs exits: let their background uploads end (see :mod:`.uploads`),
    then the hashing of their files (:mod:`.digests`), within ``drain_grace`` in all."""
    if uploads.UPLOADS.pending() or digests.DIGESTS.busy():
        from .app import get_settings

        deadline = time.monotonic() + get_settings().drain_grace
        uploads.UPLOADS.wait(get_settings().drain_grace)
        digests.DIGESTS.wait(max(0.0, deadline - time.monotonic()))


@dataclass
class _Chore:
    """Work the heartbeat thread does now and then (see :meth:`Heartbeat.add_chore`)."""

    what: str
    every: float
    run: Callable[[], object]
    next_at: float = 0.0


def _cache_meter(record: dict[str, Any], settings: Any) -> Callable[[], object]:
    """Put the environment cache's size (entries, bytes, in use, limits) in the heartbeat."""
    from .envcache import usage_under

    limits = {"max_entries": settings.max_envs, "max_bytes": settings.env_cache_bytes}
    return lambda: record.update(env_cache=usage_under(settings.env_cache, **limits))


def _store_check(record: dict[str, Any], settings: Settings) -> Callable[[], object]:
    """Check that the artifact store can be written and put the answer in the heartbeat
    (``celery-agent status`` shows it); a store that cannot is logged loudly, once a change.
    The check runs on a thread of its own: a store that does not answer must not hold a beat."""
    url = default_url(settings.artifact_root, settings.home)
    running = threading.Lock()

    def start() -> None:
        if running.acquire(blocking=False):
            threading.Thread(target=check, name="ca-store-check", daemon=True).start()

    def check() -> None:
        try:
            _check()
        finally:
            running.release()

    def _check() -> None:
        reason = probe(url)
        was = record.get("artifact_store", {}).get("error")
        record["artifact_store"] = {"root": safe_url(url), "ok": reason is None, "error": reason}
        if reason is not None and reason != was:
            logger.error("artifact store: runs' outputs cannot be kept: %s", reason)
        elif reason is None and was is not None:
            logger.warning("artifact store %s can be written again", safe_url(url))

    return start


def _announce(hostname: str, queues: list[str], gpus: WorkerGpus, s: Settings) -> None:
    """Log one line saying what this worker serves (in the background: a docker engine that does
    not answer must not hold up the start)."""
    from .executors import ExecutorSettings, available
    from .services import startup_line

    usable = available(ExecutorSettings(cache_root=s.env_cache, installer=s.installer))
    logger.info("%s", startup_line(hostname, queues, gpus, usable))


def _reap_containers(worker: str) -> None:
    """Remove containers a crashed predecessor of this worker left (in the background: a remote
    engine that does not answer must not hold up the start)."""
    try:
        from .executors.docker_engine import reap_stale_containers

        reap_stale_containers(worker)
    except Exception as err:  # no docker package, engine errors: nothing to reap
        logger.debug("container reaping skipped: %s", err)


def worker_record(parent: Any, gpus: WorkerGpus, settings: Settings) -> dict[str, Any]:
    """The static part of a worker's heartbeat."""
    queues = [q for q in parent.app.amqp.queues.consume_from if q != settings.sweep_queue]
    return {
        "name": parent.hostname,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": time.time(),
        "queues": queues,
        "concurrency": getattr(parent, "concurrency", None),
        "gpu_mode": gpus.mode,
        "gpus": [
            {"index": d.index, "uuid": d.uuid, "name": d.name, "memory_total": d.memory_total}
            for d in gpus.devices
        ],  # fmt: skip
        "interval": settings.heartbeat_interval,
    }


def _leases(store: Any) -> Any:
    from .leases import GpuLeases

    return GpuLeases(store.r, store.keys, socket.gethostname())
