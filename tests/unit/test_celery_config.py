"""The Celery app: our defaults, then the user's config module, then CELERY_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_agent.app import create_app


def test_defaults_fit_long_gpu_jobs():
    conf = create_app({"CELERY_AGENT_REDIS_URL": "redis://h:1/3"}).conf
    assert conf.broker_url == "redis://h:1/3" and conf.result_backend == "redis://h:1/3"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.broker_transport_options["queue_order_strategy"] == "priority"
    assert conf.worker_send_task_events and conf.task_send_sent_event and conf.task_track_started


def test_config_module_overrides_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "my_celery_cfg.py").write_text(
        "result_expires = 42\nworker_prefetch_multiplier = 4\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    conf = create_app({"CELERY_AGENT_CONFIG": "my_celery_cfg"}).conf
    assert conf.result_expires == 42 and conf.worker_prefetch_multiplier == 4
    assert conf.task_acks_late, "settings the module does not name keep our defaults"


def test_celery_broker_url_variable_overrides_the_agent_url(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://broker:6379/5")
    conf = create_app({"CELERY_AGENT_REDIS_URL": "redis://h:1/3"}).conf
    assert conf.broker_url == "redis://broker:6379/5" and conf.result_backend == "redis://h:1/3"


def test_rabbitmq_queues_take_the_agents_priorities_requeues_first():
    from celery_agent.defaults import requeue_priority

    url = "amqp://guest:guest@mq:5672//"
    conf = create_app({"CELERY_AGENT_REDIS_URL": "redis://h:1/3", "CELERY_BROKER_URL": url}).conf
    assert conf.broker_url == url and conf.result_backend == "redis://h:1/3"
    assert conf.task_queue_max_priority == requeue_priority(url) > conf.task_default_priority
    assert conf.task_create_missing_queue_type == "classic"
    assert "queue_order_strategy" not in conf.broker_transport_options
    redis = create_app({"CELERY_AGENT_REDIS_URL": "redis://h:1/3"}).conf
    assert requeue_priority("redis://h:1/3") < redis.task_default_priority  # (0 goes first)
    assert redis.task_queue_max_priority is None


def test_quorum_queues_are_a_setting_and_a_wrong_type_is_named():
    from celery_agent.errors import ConfigError

    env = {"CELERY_BROKER_URL": "amqp://mq//", "CELERY_AGENT_AMQP_QUEUE_TYPE": "quorum"}
    conf = create_app(env).conf
    assert conf.task_create_missing_queue_type == "quorum" and conf.task_queue_max_priority is None
    with pytest.raises(ConfigError, match="amqp_queue_type='lazy'") as err:
        create_app(env | {"CELERY_AGENT_AMQP_QUEUE_TYPE": "lazy"})
    assert "classic or quorum" in str(err.value)
