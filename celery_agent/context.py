"""What a worker's pool process needs to run jobs: settings, store, caches, GPUs, its name."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from . import leases as leases_mod
from . import runenv
from .executors.base import ExecutorSettings
from .executors.indexes import IndexDefaults
from .fairorder import FairOrder, fair_order
from .gpus import DYNAMIC, WorkerGpus
from .keeper import Keeper, keeper_for
from .settings import Settings
from .source import SourceCache
from .state import RunStore
from .workers import WorkerRegistry


@dataclass
class WorkerContext:
    """What a worker process needs to run jobs: settings, state store, caches, its name, its GPUs.

    A plain container: :meth:`create` builds one from a worker's settings, store and environment;
    a test builds one from whatever parts it wants."""

    settings: Settings
    store: RunStore
    worker: str
    resend: Any  #: resend(run_id, spec_json, queue) puts a run back on its queue (or None)
    base_env: dict[str, str]  #: the worker's variables a run gets (see runenv.passed)
    threads: int  #: thread-pool size a run is given (its CPU share)
    sources: SourceCache
    registry: WorkerRegistry
    keeper: Keeper  #: claims, cancels, deferred writes of its runs
    gpus: WorkerGpus  #: published by the worker's main process
    leases: leases_mod.GpuLeases | None  #: dynamic GPU leases (a dynamic worker only)
    executor_settings: ExecutorSettings
    fair: FairOrder | None = None  #: fair order and quotas (None: every run is admitted)

    @classmethod
    def create(
        cls,
        settings: Settings,
        store: RunStore,
        worker: str,
        resend: Any = None,
        environ: Mapping[str, str] | None = None,
    ) -> WorkerContext:
        """The context of a worker named ``worker`` with ``settings`` and ``store``, its
        environment (GPUs, pool size, variables runs get) read once from ``environ``."""
        environ = os.environ if environ is None else environ
        gpus = WorkerGpus.from_env(environ)
        leases = (
            leases_mod.GpuLeases(store.r, store.keys, socket.gethostname())
            if gpus.mode == DYNAMIC
            else None
        )
        return cls(
            settings=settings,
            store=store,
            worker=worker,
            resend=resend,
            base_env=runenv.passed(environ),
            threads=runenv.cpu_share(environ),
            sources=SourceCache(settings.git_cache, keep=settings.checkouts_kept),
            registry=WorkerRegistry(store.r, store.keys),
            keeper=keeper_for(store),
            gpus=gpus,
            leases=leases,
            executor_settings=executor_settings(settings),
            fair=fair_order(store, settings, gpus) if settings.fair_share else None,
        )


def executor_settings(settings: Settings) -> ExecutorSettings:
    """What the executors of a worker with ``settings`` are given."""
    return ExecutorSettings(
        cache_root=settings.env_cache,
        installer=settings.installer,
        max_envs=settings.max_envs,
        max_env_bytes=settings.env_cache_bytes,
        failure_ttl=settings.env_failure_ttl,
        build_timeout=settings.env_build_timeout,
        indexes=IndexDefaults.of(settings),
        bytecode=settings.env_bytecode,
    )


class ResultWrites(Protocol):
    """What the run's own writes carry for the Celery task's result (see :mod:`.tasks`)."""

    def started(self, pipe: Any) -> None:
        """Queue the STARTED result on the pipeline that records the start."""

    def ended(self, pipe: Any, summary: dict[str, Any]) -> None:
        """Queue the final result (``summary``) on the pipeline that records the end."""
