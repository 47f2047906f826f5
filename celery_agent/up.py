"""`celery-agent up`: Redis (embedded unless one answers), a worker and beat on one machine; the
messages go through Redis too unless a broker URL (RabbitMQ: ``amqp://...``) is given."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .embedded import EmbeddedRedis, _answers

logger = logging.getLogger(__name__)


@dataclass
class Stack:
    """What `up` runs: a Redis (embedded or given) and one worker process with beat inside."""

    home: Path
    port: int = 6379
    redis_url: str | None = None
    broker_url: str | None = None  #: a broker apart from Redis (RabbitMQ), else Redis carries them
    queues: str = "default"
    concurrency: int = 1
    loglevel: str = "INFO"
    redis: EmbeddedRedis | None = None
    worker: subprocess.Popen[bytes] | None = None
    stopping: threading.Event = field(default_factory=threading.Event)

    def start_redis(self) -> str:
        """Use the Redis at ``redis_url`` when it answers, else start the embedded one."""
        if self.redis_url and _answers(self.redis_url):
            return self.redis_url
        self.redis = EmbeddedRedis(self.home / "redis", port=self.port).start()
        return self.redis.url

    def worker_argv(self) -> list[str]:
        """The worker's command line: the queues, beat embedded (-B), its schedule in ``home``."""
        return [
            sys.executable, "-m", "celery", "-A", "celery_agent", "worker",
            "-Q", self.queues, "-c", str(self.concurrency), "-n", "up@%h",
            "-B", "-s", str(self.home / "celerybeat-schedule"), "--loglevel", self.loglevel,
        ]  # fmt: skip

    def start_worker(self, url: str) -> None:
        """Start the worker (and beat) against ``url``."""
        env = dict(os.environ, CELERY_AGENT_REDIS_URL=url, CELERY_AGENT_HOME=str(self.home))
        env.pop("CELERY_BROKER_URL", None)
        env.pop("CELERY_RESULT_BACKEND", None)
        if self.broker_url:
            env["CELERY_BROKER_URL"] = self.broker_url
        self.worker = subprocess.Popen(
            self.worker_argv(), env=env, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def stop(self) -> None:
        """Stop the worker (warm shutdown, then kill), then Redis."""
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        if self.redis is not None:
            self.redis.stop()


def run_up(stack: Stack, announce: Callable[[str], None]) -> int:
    """Run the stack until Ctrl+C / SIGTERM or until the worker exits; returns an exit code."""
    url = stack.start_redis()
    try:
        stack.start_worker(url)
        announce(url)
        previous = signal.signal(signal.SIGTERM, lambda *_: stack.stopping.set())
        try:
            while not stack.stopping.wait(0.5):
                if stack.worker is not None and stack.worker.poll() is not None:
                    return int(stack.worker.returncode or 1)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
        return 0
    finally:
        stack.stop()
