"""GPU sets: parsing --gpus, what a run gets in each mode, and the pinning environment."""

from __future__ import annotations

import pytest

from celery_agent.errors import ConfigError, GpuUnavailable
from celery_agent.gpus import (
    CPU,
    DYNAMIC,
    STATIC,
    UNBOUND,
    WorkerGpus,
    asked,
    fake_uuid,
    gpu_ids,
    inventory,
    parse_selection,
    pin_env,
)  # fmt: skip
from celery_agent.monitoring.gpu import GpuDevice

FOUR = [GpuDevice(i, fake_uuid(i)) for i in range(4)]


@pytest.mark.parametrize(
    ("text", "indices"),
    [("0", [0]), ("0,2", [0, 2]), ("1-3", [1, 2, 3]), ("all", [0, 1, 2, 3]), ("0-1,3", [0, 1, 3]),
     ("2,2", [2]), (fake_uuid(3), [3])],
)  # fmt: skip
def test_selection_names_gpus_by_index_range_all_or_uuid(text, indices):
    assert [d.index for d in parse_selection(text, FOUR)] == indices


@pytest.mark.parametrize("text", ["4", "x", "3-1", "0-9", "GPU-nope"])
def test_selection_of_missing_or_malformed_gpus_is_a_config_error(text):
    with pytest.raises(ConfigError):
        parse_selection(text, FOUR)


def test_missing_gpu_error_tells_how_to_declare_fake_ones():
    with pytest.raises(ConfigError, match="CELERY_AGENT_FAKE_GPUS"):
        parse_selection("0", [])


def test_declared_fake_gpus_form_the_inventory():
    found = inventory({"CELERY_AGENT_FAKE_GPUS": "3"})
    assert [(d.index, d.uuid) for d in found] == [(i, fake_uuid(i)) for i in range(3)]


def test_without_nvml_the_inventory_is_empty_not_an_error():
    assert inventory({}) == []  # this machine has no NVIDIA driver


def test_worker_options_choose_the_mode():
    assert WorkerGpus.from_options(None).mode == UNBOUND
    assert WorkerGpus.from_options(None, cpu_only=True).mode == CPU
    static = WorkerGpus.from_options("1", available=FOUR)
    assert static.mode == STATIC and [d.index for d in static.devices] == [1]
    assert WorkerGpus.from_options("0-3", dynamic=True, available=FOUR).mode == DYNAMIC


@pytest.mark.parametrize(("gpus", "dynamic", "cpu_only"), [("0", False, True), (None, True, False)])
def test_contradicting_worker_options_are_refused(gpus, dynamic, cpu_only):
    with pytest.raises(ConfigError):
        WorkerGpus.from_options(gpus, dynamic, cpu_only, available=FOUR)


def test_static_worker_gives_every_run_all_its_gpus():
    w = WorkerGpus(STATIC, FOUR[:2])
    assert w.request(None) == FOUR[:2] and w.request(1) == FOUR[:2] and w.request("all") == FOUR[:2]
    assert w.request("1") == [FOUR[1]]


def test_dynamic_worker_turns_requests_into_counts_or_named_gpus():
    w = WorkerGpus(DYNAMIC, FOUR)
    assert w.request(None) == 0 and w.request(2) == 2 and w.request("1,3") == [FOUR[1], FOUR[3]]


@pytest.mark.parametrize(("mode", "wanted"), [(STATIC, 3), (DYNAMIC, 3), (DYNAMIC, "3"), (CPU, 1)])
def test_a_request_the_worker_can_never_meet_fails_at_once(mode, wanted):
    with pytest.raises(GpuUnavailable, match="GPU"):
        WorkerGpus(mode, FOUR[:2] if mode != CPU else []).request(wanted)


def test_pinning_uses_uuids_and_pci_bus_order():
    env = pin_env(STATIC, FOUR[1:3])
    assert env["CUDA_VISIBLE_DEVICES"] == f"{fake_uuid(1)},{fake_uuid(2)}"
    assert env["NVIDIA_VISIBLE_DEVICES"] == env["CUDA_VISIBLE_DEVICES"]
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_a_run_without_gpus_sees_none_and_an_unbound_worker_pins_nothing():
    assert pin_env(DYNAMIC, [])["CUDA_VISIBLE_DEVICES"] == ""
    assert pin_env(DYNAMIC, [])["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert pin_env(UNBOUND, FOUR) == {}


def test_ids_fall_back_to_indices_without_uuid():
    assert gpu_ids([GpuDevice(5, ""), FOUR[0]]) == ["5", fake_uuid(0)]


def test_worker_set_survives_the_environment_round_trip():
    w = WorkerGpus(DYNAMIC, FOUR[:2])
    assert WorkerGpus.from_env({"CELERY_AGENT_WORKER_GPUS": w.to_json()}) == w
    assert WorkerGpus.from_env({}).mode == UNBOUND


@pytest.mark.parametrize(
    ("wanted", "read"),
    [(None, ""), (0, "0"), (2, "2"), ("3", "3"), ("all", "all"), ("0,2", "=2"), ("0-3,2", "=4"),
     ("1-0", "")],
)  # fmt: skip
def test_the_gate_reads_a_runs_gpus_without_knowing_devices(wanted, read):
    assert asked(wanted) == read
