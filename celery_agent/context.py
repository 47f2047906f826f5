"""What a worker's pool process needs to run jobs: settings, store, caches, GPUs, its name."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Protocol

from . import leases as leases_mod
from . import runenv
from .executors.base import ExecutorSettings
from .executors.indexes import IndexDefaults
from .gpus import DYNAMIC, WorkerGpus
from .keeper import keeper_for
from .settings import Settings
from .source import SourceCache
from .state import RunStore
from .workers import WorkerRegistry


@dataclass
class WorkerContext:
    """What a worker process needs to run jobs: settings, state store, caches, its name."""

    settings: Settings
    store: RunStore
    worker: str
    resend: Any = None  #: resend(run_id, spec_json, queue) puts a run back on its queue

    def __post_init__(self) -> None:
        #: the worker's variables a run gets (see runenv.passed), read once
        self.base_env = runenv.passed(os.environ)
        self.threads = runenv.cpu_share()  #: thread-pool size a run is given (its CPU share)
        self.sources = SourceCache(self.settings.git_cache, keep=self.settings.checkouts_kept)
        self.registry = WorkerRegistry(self.store.r, self.store.keys)
        self.keeper = keeper_for(self.store)  # claims, cancels, deferred writes of its runs
        self.gpus = WorkerGpus.from_env()  # published by the worker's main process
        self.leases = (
            leases_mod.GpuLeases(self.store.r, self.store.keys, socket.gethostname())
            if self.gpus.mode == DYNAMIC
            else None
        )
        self.executor_settings = ExecutorSettings(
            cache_root=self.settings.env_cache,
            installer=self.settings.installer,
            max_envs=self.settings.max_envs,
            max_env_bytes=self.settings.env_cache_bytes,
            failure_ttl=self.settings.env_failure_ttl,
            build_timeout=self.settings.env_build_timeout,
            indexes=IndexDefaults.of(self.settings),
        )


class ResultWrites(Protocol):
    """What the run's own writes carry for the Celery task's result (see :mod:`.tasks`)."""

    def started(self, pipe: Any) -> None:
        """Queue the STARTED result on the pipeline that records the start."""

    def ended(self, pipe: Any, summary: dict[str, Any]) -> None:
        """Queue the final result (``summary``) on the pipeline that records the end."""
