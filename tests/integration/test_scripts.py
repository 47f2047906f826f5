"""Every script in scripts/ is run by a test (scripts/test is what CI runs, so it is not run here)."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import ROOT

from celery_agent.embedded import free_port

pytestmark = pytest.mark.integration


def test_quickstart_runs_the_example_end_to_end_and_exits_with_its_code(tmp_path):
    env = dict(
        os.environ, CELERY_AGENT_PORT=str(free_port()), CELERY_AGENT_HOME=str(tmp_path / "home")
    )
    env.pop("CELERY_AGENT_REDIS_URL", None)
    done = subprocess.run(
        [str(ROOT / "scripts" / "quickstart")], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "epoch 10 loss" in done.stdout
    assert "accuracy" in done.stdout
    results = list((tmp_path / "home" / "runs").glob("*/output/result.yaml"))
    assert len(results) == 1 and "accuracy" in results[0].read_text()
    assert "the run finished with exit code 0" in done.stderr


def test_rabbitmq_start_is_idempotent_and_prints_the_url(amqp_url):
    """A second `scripts/rabbitmq start` on the node the session uses finds it answering."""
    from urllib.parse import urlsplit

    port = urlsplit(amqp_url).port
    env = dict(os.environ, RABBITMQ_PORT=str(port))
    script = str(ROOT / "scripts" / "rabbitmq")
    done = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"amqp://guest:guest@127.0.0.1:{port}//"
    assert (
        subprocess.run([script, "url"], env=env, capture_output=True, text=True).stdout
        == done.stdout
    )
