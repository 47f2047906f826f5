"""GPU workers end to end: --gpus pinning, dynamic leases, heartbeats while busy, status, sweep by beat.

The GPUs are declared (CELERY_AGENT_FAKE_GPUS), so the selection, lease and pinning logic runs here
exactly as on a GPU machine.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from conftest import Worker

from celery_agent import TaskSpec, submit
from celery_agent.app import get_registry
from celery_agent.cli import main
from celery_agent.gpus import fake_uuid
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration

SHOW_GPUS = """\
import os, sys, time
start = time.time()
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0)
print("CVD=" + os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
print("NVD=" + os.environ.get("NVIDIA_VISIBLE_DEVICES", "<unset>"))
print("ORDER=" + os.environ.get("CUDA_DEVICE_ORDER", "<unset>"))
print(f"SPAN={start} {time.time()}")
"""
FAST = {"CELERY_AGENT_HEARTBEAT_INTERVAL": "0.5", "CELERY_AGENT_FAKE_GPUS": "2"}


@pytest.fixture(scope="module")
def static_worker(redis_url, tmp_path_factory):
    """A worker that owns declared GPU 1 of 2, one run at a time, beating every 0.5 s."""
    w = Worker(tmp_path_factory.mktemp("gpu1"), redis_url, f"gpu1-{uuid.uuid4().hex[:6]}",
               concurrency=1, args=("--gpus", "1"), **FAST)  # fmt: skip
    yield w.start()
    w.stop()


def spec(repo, queue: str, *args: str, **kw) -> TaskSpec:
    return TaskSpec(
        repo=str(repo), entry="show.py", queue=queue, executor="local", args=list(args), **kw
    )


def output(record: dict, key: str) -> str:
    return next(line.split("=", 1)[1] for line in record["log_tail"] if line.startswith(key + "="))


def heartbeat_of(worker: Worker, timeout: float = 10) -> dict:
    registry = get_registry()

    def beat() -> dict | None:
        name = next((n for n in registry.names() if n.startswith(worker.name + "@")), None)
        return registry.get(name) if name else None

    return wait_for(
        f"a heartbeat from {worker.name}",
        beat,
        timeout,
        every=0.1,
        detail=lambda: worker.output()[-2000:],
    )


def test_static_worker_pins_every_run_to_its_gpus_by_uuid(static_worker, make_repo):
    hb = heartbeat_of(static_worker)
    assert hb["gpu_mode"] == "static" and [(g["index"], g["uuid"]) for g in hb["gpus"]] == [
        (1, fake_uuid(1))
    ]
    assert (
        hb["queues"] == [static_worker.queues]
        and hb["pid"] > 0
        and hb["snapshot"]["host"]["memory_total"] > 0
    )
    record = submit(spec(make_repo({"show.py": SHOW_GPUS}), static_worker.queues)).wait(60)
    assert record["state"] == "succeeded", record
    assert output(record, "CVD") == fake_uuid(1) and output(record, "NVD") == fake_uuid(1)
    assert output(record, "ORDER") == "PCI_BUS_ID" and record["gpus"] == [fake_uuid(1)]


def test_a_run_asking_more_gpus_than_the_worker_owns_fails_at_once(static_worker, make_repo):
    start = time.monotonic()
    record = submit(spec(make_repo({"show.py": SHOW_GPUS}), static_worker.queues, gpus=2)).wait(60)
    assert (
        record["state"] == "failed" and "asks for 2 GPUs but this worker owns 1" in record["error"]
    )
    assert time.monotonic() - start < 15


def test_heartbeats_keep_flowing_while_the_only_pool_slot_runs_a_long_job(static_worker, make_repo):
    run = submit(spec(make_repo({"show.py": SHOW_GPUS}), static_worker.queues, "10"))
    beats, current = set(), set()

    def ended() -> bool:  # (a heartbeat seen at every look)
        hb = heartbeat_of(static_worker)
        if run.state == "running":
            beats.add(hb["at"])
            current.update(hb["runs"])
        return run.state in ("succeeded", "failed")

    wait_for("the run to end", ended, 60, every=0.25)
    assert run.state == "succeeded"
    assert len(beats) >= 10, f"only {len(beats)} heartbeats during a 10 s job at 0.5 s"
    assert current == {run.id}, "the heartbeat names the run the pool is running"
    # the next heartbeats no longer name it
    wait_for(
        "a heartbeat naming no run",
        lambda: heartbeat_of(static_worker)["runs"] == [],
        10,
        every=0.1,
        detail=lambda: heartbeat_of(static_worker)["runs"],
    )


def test_status_lists_the_worker_with_its_gpus(static_worker, capsys):
    heartbeat_of(static_worker)
    assert main(["status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (row,) = [w for w in data["workers"] if w["name"].startswith(static_worker.name + "@")]
    assert (
        row["state"] == "online" and row["queues"] == [static_worker.queues] and row["gpus"] == [1]
    )
    assert any(
        g["uuid"] == fake_uuid(1) and static_worker.name in g["workers"][0] for g in data["gpus"]
    )
    assert main(["status", "--history", row["name"], "--points", "5"]) == 0
    assert "cpu %" in capsys.readouterr().out


def test_dynamic_worker_never_gives_a_gpu_to_two_runs(make_worker, make_repo):
    w = make_worker(f"dyn-{uuid.uuid4().hex[:6]}", concurrency=3, args=("--gpus", "0-1", "--dynamic"),
                    CELERY_AGENT_GPU_WAIT="30", **FAST)  # fmt: skip
    repo = make_repo({"show.py": SHOW_GPUS})
    runs = [submit(spec(repo, w.queues, "1.5", gpus=1)) for _ in range(3)]
    none = submit(spec(repo, w.queues))
    records = [r.wait(90) for r in runs]
    assert [r["state"] for r in records] == ["succeeded"] * 3, records
    spans = [(*map(float, output(r, "SPAN").split()), output(r, "CVD")) for r in records]
    assert all(cvd in (fake_uuid(0), fake_uuid(1)) for _, _, cvd in spans)
    for i, (s1, e1, g1) in enumerate(spans):
        for s2, e2, g2 in spans[i + 1 :]:
            assert not (s1 < e2 and s2 < e1 and g1 == g2), f"{g1} shared by overlapping runs"
    assert none.wait(60)["state"] == "succeeded" and output(none.info(), "CVD") == "", (
        "no GPU asked, none seen"
    )
