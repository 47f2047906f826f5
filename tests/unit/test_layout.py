"""The workers `celery-agent workers` plans for a machine: per GPU, pooled, or one CPU worker."""

from __future__ import annotations

import shlex
import sys

import pytest

from celery_agent.cli import main
from celery_agent.errors import ConfigError
from celery_agent.layout import plan
from celery_agent.monitoring.gpu import GpuDevice

TWO = [GpuDevice(0, "GPU-aaaa"), GpuDevice(1, "GPU-bbbb")]


def test_one_worker_per_gpu_on_its_own_queue_then_the_shared_ones():
    layout = plan(found=TWO)
    assert [w.name for w in layout.workers] == ["gpu0@%h", "gpu1@%h"]
    assert layout.workers[1].options == (
        "-Q", "gpu1,gpu,default", "--gpus", "1", "-c", "1", "-n", "gpu1@%h",
    )  # fmt: skip
    assert layout.reason == "2 GPU(s) (0, 1): one worker per GPU"


def test_a_machine_without_gpus_gets_one_cpu_worker_on_default():
    layout = plan(found=[])
    (cpu,) = layout.workers
    assert cpu.options == ("-Q", "default", "--cpu-only", "-c", "1", "-n", "cpu@%h")
    assert layout.reason.startswith("no GPU on this machine (")


def test_selection_queues_and_concurrency_shape_each_worker():
    (only,) = plan(selection="1", queues="gpu,gpu1,urgent", concurrency=2, found=TWO).workers
    assert only.options == ("-Q", "gpu1,gpu,urgent", "--gpus", "1", "-c", "2", "-n", "gpu1@%h")


def test_pooled_is_one_dynamic_worker_with_a_slot_per_gpu():
    (pooled,) = plan("pooled", found=TWO).workers
    assert pooled.options == (
        "-Q", "gpu,default", "--gpus", "0,1", "--dynamic", "-c", "2", "-n", "gpus@%h",
    )  # fmt: skip


def test_a_gpu_that_is_not_there_is_a_config_error_naming_the_ones_that_are():
    with pytest.raises(ConfigError, match="GPU 3 is not on this machine") as err:
        plan(selection="3", found=TWO)
    assert "GPU-bbbb" in str(err.value)
    with pytest.raises(ConfigError, match="no GPU was found"):
        plan(selection="0", found=[])


def test_argv_runs_celery_with_this_interpreter_and_extra_words_last():
    (worker,) = plan(found=TWO[:1]).workers
    assert worker.argv(["--loglevel", "INFO"]) == [
        sys.executable, "-m", "celery", "-A", "celery_agent", "worker",
        "-Q", "gpu0,gpu,default", "--gpus", "0", "-c", "1", "-n", "gpu0@%h", "--loglevel", "INFO",
    ]  # fmt: skip


def test_dry_run_prints_the_plan_for_the_declared_gpus(monkeypatch, capsys):
    monkeypatch.setenv("CELERY_AGENT_FAKE_GPUS", "2")
    assert main(["workers", "--dry-run", "--loglevel", "INFO"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# 2 GPU(s) (0, 1): one worker per GPU"
    words = [shlex.split(line) for line in lines[1:]]
    assert [w[w.index("-Q") + 1] for w in words] == ["gpu0,gpu,default", "gpu1,gpu,default"]
    assert all(w[-2:] == ["--loglevel", "INFO"] for w in words)


def test_dry_run_without_gpus_says_why_none_was_found(monkeypatch, capsys):
    monkeypatch.setenv("CELERY_AGENT_FAKE_GPUS", "0")
    assert main(["workers", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# no GPU on this machine (CELERY_AGENT_FAKE_GPUS=0): one CPU worker" in out
    assert "--cpu-only" in out


def test_a_bad_selection_is_a_one_line_error(monkeypatch, capsys):
    monkeypatch.setenv("CELERY_AGENT_FAKE_GPUS", "1")
    assert main(["workers", "--gpus", "2"]) == 1
    assert "error: GPU 2 is not on this machine" in capsys.readouterr().err
