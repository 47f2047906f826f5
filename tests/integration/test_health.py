"""`celery-agent health` as a probe: its exit code for a live worker, a gone one and no Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from celery_agent.embedded import free_port
from celery_agent.state import RunStore
from celery_agent.workers import WorkerRegistry

pytestmark = pytest.mark.integration


def health(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CELERY_AGENT_REDIS_URL": redis_url}
    return subprocess.run(
        [str(Path(sys.executable).with_name("celery-agent")), "health", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_health_exit_codes_say_alive_stale_and_redis_unreachable(
    redis_url: str, store: RunStore
) -> None:
    name = f"probe-{uuid.uuid4().hex[:8]}@host"
    registry = WorkerRegistry(store.r, store.keys)
    registry.beat(name, {"at": time.time(), "hostname": "host", "queues": ["q"]}, ttl=30)

    alive = health(redis_url, "--worker", name)
    assert alive.returncode == 0, alive.stderr
    assert f"worker {name} is alive" in alive.stdout

    registry.stopped(name, "host")
    gone = health(redis_url, "--worker", name)
    assert gone.returncode == 1
    assert "no current heartbeat" in gone.stderr

    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    down = health(nowhere, "--worker", name)
    assert down.returncode == 2
    assert "cannot read worker" in down.stderr
    tolerant = health(nowhere, "--worker", name, "--redis-down-ok")
    assert tolerant.returncode == 0, tolerant.stderr
