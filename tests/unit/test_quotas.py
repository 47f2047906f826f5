"""Quota and weight settings, priorities and GPU counts: the inputs of the fair-order gate."""

from __future__ import annotations

import pytest

from celery_agent.defaults import message_priority
from celery_agent.errors import ConfigError, SpecError
from celery_agent.fairgate import gpu_count
from celery_agent.gpus import GpuDevice, WorkerGpus
from celery_agent.quotas import parse_settings, parse_weights, scope
from celery_agent.settings import Settings
from celery_agent.spec import TaskSpec
from celery_agent.users import check_priority


def test_quota_items_read_as_scopes_with_their_limits():
    limits = parse_settings(["user:alice:runs=8", "user:alice:gpus=4", "project:cv@gpu:0:runs=2"])
    assert limits == {"user:alice": {"runs": 8, "gpus": 4}, "project:cv@gpu:0": {"runs": 2}}
    with pytest.raises(ConfigError, match="user:NAME:runs=N"):
        parse_settings(["alice=8"])
    assert scope("user", "bob", "gpu0") == "user:bob@gpu0"


def test_quotas_and_weights_come_from_the_settings_file_and_environment(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('quotas = ["user:alice:runs=2"]\nuser_weights = ["alice=2", "bob=0.5"]\n')
    s = Settings.load({"CELERY_AGENT_MAX_PRIORITY": "1", "CELERY_AGENT_FAIR_SHARE": "0"}, conf)
    assert s.fair_share is False and Settings().fair_share is True
    assert parse_settings(s.quotas) == {"user:alice": {"runs": 2}}
    assert parse_weights(s.user_weights) == {"alice": 2.0, "bob": 0.5} and s.max_priority == 1
    with pytest.raises(ConfigError, match="NAME=WEIGHT"):
        parse_weights(["alice=0"])


def test_priority_is_bounded_by_the_spec_and_by_the_setting():
    with pytest.raises(SpecError):
        TaskSpec.parse({"repo": "/r", "entry": "t.py", "priority": 5})
    check_priority(1, 1)
    with pytest.raises(SpecError, match="max_priority = 0") as err:
        check_priority(1, 0)
    assert "CELERY_AGENT_MAX_PRIORITY" in str(err.value.hint) and err.value.field == "priority"


def test_message_priorities_keep_each_brokers_order():
    redis = [message_priority(p, "redis://h") for p in (1, 0, -1)]
    amqp = [message_priority(p, "amqp://h") for p in (1, 0, -1)]
    assert redis == sorted(redis) and redis[1] == 3  # Redis: lower goes first; 3 is the default
    assert amqp == sorted(amqp, reverse=True) and amqp[1] == 2  # RabbitMQ: higher goes first


def test_a_run_holds_the_gpus_it_would_get():
    devices = [GpuDevice(index=i, uuid=f"GPU-{i}", name="x", memory_total=1) for i in range(4)]
    static, dynamic = WorkerGpus("static", devices), WorkerGpus("dynamic", devices)
    assert gpu_count(static, None) == 4 and gpu_count(static, 2) == 4  # (a static worker's all)
    assert gpu_count(dynamic, 2) == 2 and gpu_count(dynamic, "0,1,2") == 3
    assert gpu_count(static, 9) == 0 and gpu_count(WorkerGpus("cpu"), None) == 0
