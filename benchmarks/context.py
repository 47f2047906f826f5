"""What the benchmarks share: the cluster, the workload, the warm environment, the sizes (N)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery_agent.executors.base import ExecutorSettings, PreparedEnv
from celery_agent.executors.venv import VenvExecutor
from celery_agent.state import TERMINAL, RunStore

from .cluster import Cluster, Worker
from .workload import Workload

AGENT_QUEUE = "bench-agent"
BASELINE_QUEUE = "bench-baseline"


@dataclass
class Context:
    """Services started on first use, and the run's size (full or quick)."""

    root: Path
    quick: bool
    cluster: Cluster
    workload: Workload
    _workers: dict[str, Worker] = field(default_factory=dict)
    _env: PreparedEnv | None = None

    @classmethod
    def create(cls, root: Path, quick: bool) -> Context:
        """Start Redis, point this process's agent client at it, write the workload."""
        cluster = Cluster(root).start()
        os.environ["CELERY_AGENT_REDIS_URL"] = cluster.url
        os.environ["CELERY_AGENT_HOME"] = str(root / "client-home")
        from celery_agent.app import use_environment

        from . import baseline_app

        use_environment()
        baseline_app.point_at(cluster.url)
        return cls(root, quick, cluster, Workload.create(root))

    def n(self, full: int, quick: int) -> int:
        """The sample size for this mode."""
        return quick if self.quick else full

    @property
    def store(self) -> RunStore:
        """This process's run store, on the benchmark's Redis."""
        from celery_agent.app import get_store

        return get_store()

    def agent(self) -> Worker:
        """The agent worker (concurrency 2), started on first use."""
        return self._worker("celery_agent", AGENT_QUEUE)

    def baseline(self) -> Worker:
        """The bare Celery worker of :mod:`benchmarks.baseline_app` (concurrency 2)."""
        return self._worker("benchmarks.baseline_app", BASELINE_QUEUE)

    def _worker(self, app: str, queue: str) -> Worker:
        if queue not in self._workers:
            self._workers[queue] = self.cluster.worker(app, queue)
        return self._workers[queue]

    @property
    def env_root(self) -> Path:
        """The agent worker's env cache, which this process shares to reach the same venv."""
        return self.root / f"home-{AGENT_QUEUE}" / "cache" / "envs"

    def executor(self, cache_root: Path | None = None, installer: str = "auto") -> VenvExecutor:
        """A venv executor on ``cache_root`` (the agent worker's cache by default)."""
        return VenvExecutor(ExecutorSettings(cache_root or self.env_root, installer=installer))

    def env(self) -> PreparedEnv:
        """The workload's venv in the agent worker's cache (built on first use)."""
        if self._env is None:
            spec = self.workload.spec("first.py", AGENT_QUEUE)
            self._env = self.executor().prepare(spec, self.workload.repo, quiet)
        return self._env

    def submit_and_wait(self, spec: Any, timeout: float = 120) -> dict[str, Any]:
        """Submit a run to the agent worker and return its summary once it ended."""
        from celery_agent import submit

        self.agent()
        summary: dict[str, Any] = submit(spec).result.get(timeout=timeout)
        if summary.get("status") != "succeeded":
            raise RuntimeError(f"run {summary.get('run_id')} ended {summary.get('status')}: "
                               f"{summary.get('error')}")  # fmt: skip
        return summary

    def wait_terminal(self, run_id: str, timeout: float = 60) -> str:
        """Poll the run record until the run ended; return its state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run_state = str(self.store.get(run_id).get("state"))
            if run_state in TERMINAL:
                return run_state
            time.sleep(0.02)
        raise TimeoutError(f"run {run_id} did not end within {timeout}s")


def quiet(line: str) -> None:
    """A log function that drops the lines (the benchmark only times prepare())."""
