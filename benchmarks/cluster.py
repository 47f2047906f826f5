"""The services a benchmark talks to, on loopback: one redis-server and real Celery workers.

Everything started here is stopped by :meth:`Cluster.close`, and any process left under this one
afterwards is killed (and named on stderr), so a benchmark run leaves nothing behind. Redis and the
workers also get SIGTERM from the kernel when this process dies without cleaning up (SIGKILL).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import redis

from celery_agent.embedded import EmbeddedRedis, free_port
from celery_agent.testing import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def die_with_parent() -> None:
    """In a child between fork and exec: get SIGTERM when this process dies, even by SIGKILL."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start_redis(server: EmbeddedRedis, timeout: float = 15.0) -> None:
    """Start ``server`` like :meth:`EmbeddedRedis.start`, but tied to this process's life."""
    server.data_dir.mkdir(parents=True, exist_ok=True)
    server.proc = subprocess.Popen(
        server.argv(), stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent
    )
    client = redis.Redis.from_url(server.url, socket_connect_timeout=0.5, socket_timeout=0.5)
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError):
            if client.ping():
                return
        if server.proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"redis-server did not start on {server.url}")
        time.sleep(0.05)


class Worker(WorkerProcess):
    """A ``celery -A <app> worker`` process named ``<queue>@%h`` serving ``queue``, with its own
    home and log file, that gets SIGTERM should this process die."""

    def __init__(self, app: str, queue: str, home: Path, url: str, concurrency: int = 2,
                 env: dict[str, str] | None = None) -> None:  # fmt: skip
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        super().__init__(app, queue, home, url, queue, concurrency,
                         env={"PYTHONPATH": path} | (env or {}), log=home / "worker.log",
                         preexec_fn=die_with_parent)  # fmt: skip
        self.queue = queue


class Cluster:
    """One redis-server and the workers started on it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.redis = EmbeddedRedis(root / "redis", port=free_port())
        self.workers: list[Worker] = []
        self.servers: list[EmbeddedRedis] = []  #: extra redis-servers (see :meth:`extra_redis`)
        self.strays: set[int] = set()  #: pids that may outlive their parent (checked at close)

    @property
    def url(self) -> str:
        """The redis:// URL of the server."""
        return self.redis.url

    def start(self) -> Cluster:
        """Start the Redis server."""
        start_redis(self.redis)
        return self

    def worker(self, app: str, queue: str, concurrency: int = 2) -> Worker:
        """Start a worker of ``app`` serving ``queue``."""
        return self.workers_together([(app, queue, {})], concurrency)[0]

    def workers_together(
        self, specs: list[tuple[str, str, dict[str, str]]], concurrency: int = 2
    ) -> list[Worker]:
        """Start one worker per (app, queue, extra environment) at once; wait for all of them."""
        started = []
        for app, queue, env in specs:
            worker = Worker(app, queue, self.root / f"home-{queue}", self.url, concurrency, env)
            self.workers.append(worker)
            started.append(worker.launch())
        return [worker.wait_ready() for worker in started]

    def extra_redis(self, name: str) -> EmbeddedRedis:
        """Start another redis-server (same configuration, own folder and port); closed with us."""
        server = EmbeddedRedis(self.root / name, port=free_port())
        self.servers.append(server)
        start_redis(server)
        return server

    def close(self) -> list[str]:
        """Stop workers and Redis; kill anything of ours still running. Returns what was killed."""
        for worker in self.workers:
            worker.stop()
        for server in [*self.servers, self.redis]:
            server.stop()
        return kill_leftovers(self.strays)


def kill_leftovers(strays: set[int], wait: float = 3.0) -> list[str]:
    """Kill this process's remaining descendants and the given pids; describe each one killed."""
    deadline = time.monotonic() + wait
    left = _alive(strays)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _alive(strays)
    killed = []
    for proc in left:
        with contextlib.suppress(psutil.Error):
            killed.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
            proc.kill()
    return killed


def _alive(strays: set[int]) -> list[psutil.Process]:
    procs = {p.pid: p for p in psutil.Process().children(recursive=True)}
    for pid in strays:
        with contextlib.suppress(psutil.Error):
            procs.setdefault(pid, psutil.Process(pid))
    return [p for p in procs.values() if not gone(p.pid)]


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (exited, or a zombie waiting to be reaped)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False
