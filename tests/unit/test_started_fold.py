"""Which result backends a run's start write may carry the STARTED result for."""

from __future__ import annotations

import redis
from celery.backends.redis import RedisBackend

from celery_agent.app import app
from celery_agent.tasks import same_redis


def backend(url: str) -> RedisBackend:
    return RedisBackend(app=app, url=url)


def test_the_same_server_and_database_is_the_same_redis():
    client = redis.Redis.from_url("redis://127.0.0.1:6399/0")
    assert same_redis(backend("redis://127.0.0.1:6399/0"), client)


def test_another_database_port_host_or_password_is_not():
    client = redis.Redis.from_url("redis://127.0.0.1:6399/0")
    for url in ("redis://127.0.0.1:6399/1", "redis://127.0.0.1:6400/0",
                "redis://10.0.0.2:6399/0", "redis://:pw@127.0.0.1:6399/0"):  # fmt: skip
        assert not same_redis(backend(url), client), url


def test_a_backend_that_is_not_plain_redis_is_not():
    client = redis.Redis.from_url("redis://127.0.0.1:6399/0")
    assert not same_redis(object(), client)
