"""`celery-agent workers` with real Celery workers that cannot start: each says why, the
supervisor says which one stopped and when it starts it again, and a stop still ends it all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def test_a_worker_that_cannot_start_says_why_and_is_started_again(tmp_path, redis_url):
    env = dict(os.environ, CELERY_AGENT_FAKE_GPUS="1", CELERY_AGENT_HOME=str(tmp_path),
               CELERY_AGENT_CONFIG="no_such_celery_config")  # fmt: skip
    log = tmp_path / "workers.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "celery-agent"), "workers"], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:

        def started_again() -> bool:  # failed once, started again; alive at every look
            assert proc.poll() is None, log.read_text()
            return log.read_text().count("starting gpu0@") >= 2

        wait_for("gpu0 started a second time", started_again, 90, every=0.2, detail=log.read_text)
        text = log.read_text()
        assert "ModuleNotFoundError: No module named 'no_such_celery_config'" in text, text
        host = socket.gethostname()
        assert f"gpu0@{host} exited with code 2 after" in text, text
        assert "(its output above says why); starting it again in 1s" in text, text
        os.killpg(proc.pid, signal.SIGTERM)  # as honcho stops it
        assert proc.wait(30) == 0, log.read_text()
        assert "every worker has stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
