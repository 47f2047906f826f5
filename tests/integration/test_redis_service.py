"""`celery-agent redis`, the Procfile's Redis: it outlives its clients' stop, within a bound."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from celery_agent.embedded import free_port
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def start(tmp_path: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    argv = [str(BIN / "celery-agent"), "redis", "--port", str(port), "--dir", str(tmp_path), *extra]
    with (tmp_path / "out.log").open("wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_redis_stops_once_its_last_client_leaves_not_at_sigterm(tmp_path):
    port = free_port()
    proc = start(tmp_path, port, "--linger", "30")
    client = redis.Redis(port=port, socket_timeout=2)
    wait_for("Redis to answer", lambda: answers(client), 30)
    client.set("kept", "1")
    os.killpg(proc.pid, signal.SIGTERM)  # as honcho sends it: to the whole group
    wait_for(
        "the wait for clients to leave",
        lambda: "other client(s) have left" in (tmp_path / "out.log").read_text(),
        30,
    )
    assert proc.poll() is None and client.get("kept") == b"1"  # still serving its client
    client.close()
    assert proc.wait(20) == 0
    assert "appendonlydir" in os.listdir(tmp_path)


def test_a_second_signal_stops_redis_at_once(tmp_path):
    port = free_port()
    proc = start(tmp_path, port, "--linger", "60")
    client = redis.Redis(port=port, socket_timeout=2)
    wait_for("Redis to answer", lambda: answers(client), 30)
    proc.send_signal(signal.SIGTERM)
    wait_for(
        "the wait for clients to leave",
        lambda: "other client(s) have left" in (tmp_path / "out.log").read_text(),
        30,
    )
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 0
    assert not answers(client)


def test_a_redis_that_already_answers_is_used(tmp_path, redis_url):
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proc = start(tmp_path, port)
    wait_for(
        "'already answers'", lambda: "already answers" in (tmp_path / "out.log").read_text(), 30
    )
    assert proc.poll() is None  # it waits, as a Procfile line must, instead of failing
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert answers(redis.Redis.from_url(redis_url))  # and leaves that Redis alone
