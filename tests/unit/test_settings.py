from __future__ import annotations

from pathlib import Path

import pytest

from celery_agent.errors import ConfigError
from celery_agent.settings import Settings


def test_layers_apply_in_order_and_remember_their_source(tmp_path: Path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[agent]\nprefix = "file"\ngrace = 3\nmax_envs = 7\n')
    env = {"CELERY_AGENT_CONFIG_FILE": str(cfg), "CELERY_AGENT_GRACE": "5"}
    s = Settings.load(env, overrides={"max_envs": 2})
    assert (s.prefix, s.grace, s.max_envs) == ("file", 5.0, 2)
    assert s.sources["prefix"].startswith("file") and s.sources["grace"] == "environment"
    assert s.sources["max_envs"] == "command line"
    assert dict((n, src) for n, _, src in s.describe())["claim_ttl"] == "default"


def test_broker_and_backend_fall_back_to_redis_url():
    s = Settings.load({"CELERY_AGENT_REDIS_URL": "redis://h:1/2"})
    assert s.broker == s.backend == "redis://h:1/2"
    s = Settings.load(
        {"CELERY_AGENT_REDIS_URL": "redis://h:1/2", "CELERY_BROKER_URL": "redis://b/0"}
    )
    assert s.broker == "redis://b/0" and s.backend == "redis://h:1/2"


def test_bad_value_names_the_variable():
    with pytest.raises(ConfigError, match="CELERY_AGENT_GRACE"):
        Settings.load({"CELERY_AGENT_GRACE": "soon"})


def test_unknown_setting_in_file_is_rejected(tmp_path: Path):
    cfg = tmp_path / "a.toml"
    cfg.write_text("gracee = 1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        Settings.load({"CELERY_AGENT_CONFIG_FILE": str(cfg)})


def test_home_paths_derive_from_home():
    s = Settings.load({"CELERY_AGENT_HOME": "/data/ca"})
    assert s.runs_dir == Path("/data/ca/runs") and s.git_cache == Path("/data/ca/cache/git")
