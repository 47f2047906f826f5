from __future__ import annotations

import sys

from celery_agent import runenv
from celery_agent.gpus import WorkerGpus
from celery_agent.monitoring.gpu import GpuDevice
from celery_agent.services import services_argv, startup_line
from celery_agent.settings import Settings


def test_services_argv_is_a_thread_pool_worker_without_gpus():
    argv = services_argv(concurrency=8, extra=["--loglevel", "INFO"])
    assert argv[:6] == [sys.executable, "-m", "celery", "-A", "celery_agent", "worker"]
    text = " ".join(argv)
    assert "-Q services" in text and "-P threads" in text and "-c 8" in text
    assert "--cpu-only" in argv and "-n services@%h" in text and argv[-2:] == ["--loglevel", "INFO"]


def test_startup_line_names_queues_gpus_and_why_an_executor_is_missing():
    gpus = WorkerGpus("static", [GpuDevice(0, "GPU-1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809")])
    line = startup_line("gpu0@h", ["gpu0", "default"], gpus,
                        {"venv": None, "local": None, "docker": "engine not reachable"})  # fmt: skip
    assert line == (
        "worker gpu0@h: queues gpu0,default; GPUs static 0 (GPU-1a2b3c4d); "
        "executors venv, local; docker: engine not reachable"
    )


def test_startup_line_says_cpu_only_and_unbound():
    assert "GPUs none (cpu-only)" in startup_line("s@h", ["services"], WorkerGpus("cpu"), {})
    assert "GPUs unbound (all visible)" in startup_line("w@h", [], WorkerGpus(), {"venv": None})


def test_runs_get_the_cluster_settings_and_only_set_overrides():
    plain = runenv.cluster_vars(Settings(redis_url="redis://r:1/2", prefix="p"))
    assert plain == {"CELERY_AGENT_REDIS_URL": "redis://r:1/2", "CELERY_AGENT_PREFIX": "p"}
    split = runenv.cluster_vars(Settings(broker_url="redis://b/0", result_backend="redis://c/0"))
    assert (
        split["CELERY_BROKER_URL"] == "redis://b/0"
        and split["CELERY_RESULT_BACKEND"] == "redis://c/0"
    )


def test_redis_passwords_are_redacted_for_display():
    env = {"CELERY_AGENT_REDIS_URL": "redis://:pw@r:6379/0", "OTHER": "redis://:pw@r/0"}
    assert runenv.redacted(env) == {"CELERY_AGENT_REDIS_URL": "redis://r:6379/0",
                                    "OTHER": "redis://:pw@r/0"}  # fmt: skip
    assert runenv.secret_values(env) == ["redis://:pw@r:6379/0"]
