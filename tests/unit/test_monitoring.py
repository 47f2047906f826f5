"""Monitoring: host metrics, NVML through one choke point (made absent where a test needs it to
be, so the tests hold on GPU machines too), per-run GPU sampling."""

from __future__ import annotations

import sys
import time
import types

import pytest

from celery_agent.monitoring import Monitor, gpu
from celery_agent.monitoring.host import HostSampler
from celery_agent.monitoring.sampler import RunGpuSampler


@pytest.fixture()
def no_nvml(monkeypatch):
    """This process without NVML, whatever the machine has: pynvml cannot be imported."""
    monkeypatch.setitem(gpu._state, "pid", None)  # (forget what this process found)
    monkeypatch.setitem(sys.modules, "pynvml", None)


def test_no_nvml_means_an_empty_gpu_list_not_an_error(no_nvml):
    assert gpu.nvml_available() is False
    assert "NVML unavailable" in (gpu.nvml_unavailable_reason() or "")
    assert gpu.gpu_metrics() == [] and gpu.devices() == [] and gpu.process_memory() == {}
    assert gpu.value("nvmlDeviceGetCount") is None


def test_host_sample_has_cpu_memory_disk_and_rates_after_the_first():
    sampler = HostSampler("/")
    first = sampler.sample()
    assert first["net_rx_bps"] is None, "a rate needs two samples"
    time.sleep(0.05)
    second = sampler.sample()
    assert 0 <= second["cpu_percent"] <= 100 and len(second["cpu_per_core"]) >= 1
    assert second["memory_total"] > second["memory_used"] > 0 and second["disk_total"] > 0
    assert second["net_rx_bps"] is not None and second["disk_read_bps"] is not None
    assert len(second["load"]) == 3


def test_a_snapshot_takes_well_under_100_ms():
    monitor = Monitor()
    start = time.perf_counter()
    snap = monitor.snapshot()
    assert time.perf_counter() - start < 0.1
    assert set(snap) == {"at", "host", "gpus"} and isinstance(snap["gpus"], list)


class _FakeNvml:
    """A stand-in pynvml with one GPU whose power reading is not supported."""

    class NVMLError(Exception):
        pass

    def __getattr__(self, name):
        raise self.NVMLError(name)

    nvmlDeviceGetCount = staticmethod(lambda: 1)
    nvmlDeviceGetHandleByIndex = staticmethod(lambda i: f"h{i}")
    nvmlDeviceGetUUID = staticmethod(lambda h: b"GPU-1234")
    nvmlDeviceGetName = staticmethod(lambda h: "Fake H200")
    nvmlDeviceGetMemoryInfo = staticmethod(lambda h: types.SimpleNamespace(total=80, used=30))
    nvmlDeviceGetUtilizationRates = staticmethod(lambda h: types.SimpleNamespace(gpu=55, memory=9))
    nvmlDeviceGetTemperature = staticmethod(lambda h, s: 41)
    nvmlDeviceGetComputeRunningProcesses = staticmethod(
        lambda h: [
            types.SimpleNamespace(pid=7, usedGpuMemory=12),
            types.SimpleNamespace(pid=8, usedGpuMemory=None),
        ]
    )


@pytest.fixture()
def fake_nvml(monkeypatch):
    import os

    monkeypatch.setitem(gpu._state, "pid", os.getpid())
    monkeypatch.setitem(gpu._state, "module", _FakeNvml())


def test_values_nvml_cannot_give_are_none(fake_nvml):
    (one,) = gpu.gpu_metrics()
    assert one["uuid"] == "GPU-1234" and one["name"] == "Fake H200"
    assert one["util"] == 55 and one["memory_used"] == 30 and one["memory_total"] == 80
    assert one["temperature"] == 41 and one["power_w"] is None and one["pci_bus_id"] is None
    assert one["processes"] == [{"pid": 7, "memory": 12}, {"pid": 8, "memory": None}]
    assert gpu.process_memory() == {"GPU-1234": {7: 12, 8: None}}


def test_run_sampler_counts_only_the_runs_processes():
    readings = iter([{"A": {1: 100, 99: 5000}, "B": {2: 50}}, {"A": {1: 300}, "B": {}}])
    sampler = RunGpuSampler(read=lambda: next(readings), pids=lambda: {1, 2}, enabled=True)
    assert sampler.sample() == 150 and sampler.sample() == 300
    summary = sampler.summary()
    assert summary["gpu_memory_peak_bytes"] == 300 and summary["gpu_memory_mean_bytes"] == 225
    assert summary["gpu_samples"] == 2 and summary["gpu_memory_peak_by_gpu"] == {"A": 300, "B": 50}


def test_run_sampler_without_nvml_reports_nothing(no_nvml):
    with RunGpuSampler(interval=0.01) as sampler:
        assert sampler.enabled is False and sampler._thread is None  # nothing samples
    assert sampler.summary() == {}


def test_a_child_forked_while_nvml_locks_are_held_does_not_hang():
    import os
    import signal

    import pynvml

    with gpu._lock, pynvml.libLoadLock:  # what a heartbeat thread holds while it initializes NVML
        pid = os.fork()
        if pid == 0:  # the child: must answer (either way: GPU machine or not), not deadlock
            signal.alarm(5)
            code = 1
            try:
                gpu.nvml_available()
                code = 0
            finally:
                os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
