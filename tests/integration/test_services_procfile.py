"""`honcho start` of the Procfile's processes that need no GPU: Redis, services, beat, Flower."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from celery_agent.embedded import free_port
from celery_agent.state import RunStore
from celery_agent.workers import WorkerRegistry

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _registered() -> bool:
    done = subprocess.run([str(BIN / "celery-agent"), "services", "--help"], capture_output=True,
                          timeout=60)  # fmt: skip
    return done.returncode == 0


def _flower_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=1) as r:
            return bool(r.read() == b"OK")
    except OSError:
        return False


def _services_online(url: str) -> bool:
    try:
        rows = WorkerRegistry(*_store(url)).overview()
    except Exception:
        return False
    return any(r["name"] == f"services@{socket.gethostname()}" and r["state"] == "online"
               for r in rows)  # fmt: skip


def _store(url: str) -> tuple[object, object]:
    store = RunStore.from_url(url)
    return store.r, store.keys


def _stop(proc: subprocess.Popen[bytes]) -> None:
    family = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)  # honcho passes it on to every process
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for p in family:
        with contextlib.suppress(psutil.Error):
            p.kill()


@pytest.mark.skipif(
    not _registered(), reason="celery-agent services/flower/redis not in cli.py yet"
)
def test_honcho_starts_redis_services_beat_and_flower_from_the_procfile(tmp_path):
    redis_port, flower_port = free_port(), free_port()
    url = f"redis://127.0.0.1:{redis_port}/0"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", REDIS_PORT=str(redis_port),
               FLOWER_PORT=str(flower_port), CELERY_AGENT_REDIS_URL=url,
               CELERY_AGENT_HOME=str(tmp_path))  # fmt: skip
    argv = [sys.executable, "-m", "honcho", "-f", str(ROOT / "Procfile"), "start",
            "redis", "services", "beat", "flower"]  # fmt: skip
    log = tmp_path / "honcho.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=tmp_path,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (_services_online(url) and _flower_ok(flower_port)):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        while not list(tmp_path.glob("celerybeat-schedule*")):  # beat is up
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
    finally:
        _stop(proc)
    assert "services.1" in log.read_text() and "flower.1" in log.read_text()
