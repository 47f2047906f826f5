"""deploy/docker-compose.yml brought up on the real Docker engine, as a user runs it.

The image is built from deploy/Dockerfile by scripts/build-image with no registry and no network
(the project's wheel and its dependencies' on the local Debian of scripts/build-test-image;
cached by a hash of what goes in, so a second run builds nothing). Redis runs from that image
(deploy/docker-compose.noregistry.yml), with two CPU workers, the services worker, beat, Flower
and the exporter. A run is submitted from here with the CLI through the stack's Redis port; the
exporter, the health probe and Flower are read; `down` leaves nothing behind.

Select with ``-m compose``. Skips only when no Docker engine answers; with an engine but no
compose command it fails (apt-get install docker-compose, or the compose plugin).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from compose_support import (
    ROOT,
    Stack,
    clean_env,
    compose_cli,
    free_port,
    http_get,
    reap_stale,
)
from prometheus_client.parser import text_string_to_metric_families

from celery_agent.testing import init_repo, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.compose, pytest.mark.timeout(1800)]

IMAGE = "celery-agent:compose-test"
PROJECT = "catest"  #: the compose projects of this test are named catestXXXXXXXX
CLI = str(Path(sys.executable).parent / "celery-agent")
TRAIN = """\
import argparse, socket
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--epochs", type=int, default=1)
a = p.parse_args()
print(f"trained lr={a.lr} epochs={a.epochs} on {socket.gethostname()}")
"""
OVERRIDE = """\
services:
  redis:
    ports: ["127.0.0.1:{redis_port}:6379"]
  cpu:
    volumes: ["{repo}:{repo}:ro"]
"""


@dataclass
class Deployed:
    """The stack up, and where to reach it from here."""

    stack: Stack
    repo: Path  # the experiment's checkout, mounted at the same path in the workers
    home: Path
    redis_url: str
    exporter: str
    flower: str


def image() -> str:
    """The stack's image, built (or found current) with no registry."""
    for script, env in (("build-test-image", {}), ("build-image", {"IMAGE": IMAGE})):
        done = subprocess.run([str(ROOT / "scripts" / script)], capture_output=True, text=True,
                              timeout=1500, env=clean_env(PYTHON=sys.executable, **env))  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
    return IMAGE


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """The compose stack, up with two CPU workers; taken down (volumes too) whatever happens."""
    done = subprocess.run(["docker", "info"], capture_output=True, timeout=60)
    if done.returncode != 0:
        pytest.skip("no Docker engine reachable, the compose stack not tested")
    cli = compose_cli()
    if cli is None:
        pytest.fail("no compose command: apt-get install docker-compose (or the compose plugin)")
    reap_stale(PROJECT)  # a run of this test killed before its teardown
    home = tmp_path_factory.mktemp("compose")
    repo = home / "repo"
    repo.mkdir()
    init_repo(repo, {"train.py": TRAIN})
    redis_port, exporter_port, flower_port = free_port(), free_port(), free_port()
    override = home / "override.yml"
    override.write_text(OVERRIDE.format(redis_port=redis_port, repo=repo))
    env = clean_env(CELERY_AGENT_IMAGE=image(), EXPORTER_PORT=str(exporter_port),
                    FLOWER_PORT=str(flower_port))  # fmt: skip
    stack = Stack(cli, f"{PROJECT}{uuid.uuid4().hex[:8]}", override, env)
    try:
        stack.up(workers=2)
        yield Deployed(stack, repo, home, f"redis://127.0.0.1:{redis_port}/0",
                       f"http://127.0.0.1:{exporter_port}/metrics",
                       f"http://127.0.0.1:{flower_port}")  # fmt: skip
    except BaseException:
        print(stack.logs())  # shown with the failure
        raise
    finally:
        stack.down()


def agent(d: Deployed, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The project's CLI here, against the stack's Redis."""
    env = clean_env(CELERY_AGENT_REDIS_URL=d.redis_url,
                    CELERY_AGENT_HOME=str(d.home / "client"))  # fmt: skip
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=d.repo)  # fmt: skip


def metrics(d: Deployed) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The exporter's samples, parsed by Prometheus's own parser: (name, labels) -> value."""
    status, body = http_get(d.exporter)
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


@pytest.fixture(scope="module")
def finished_run(deployed: Deployed) -> dict[str, object]:
    """A run submitted from here to queue default, waited for; its record."""
    workers = ("celery_agent_queue_workers", (("queue", "default"),))
    wait_for(
        "two CPU workers online",
        lambda: metrics(deployed).get(workers) == 2,
        timeout=120,
        every=1.0,
        retry_on=(Exception,),
    )
    done = agent(deployed, "submit", "train.py", "--queue", "default", "-p", "lr=0.5", "--wait",
                 "--wait-timeout", "150", "--", "--epochs", "2")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    run_id = done.stderr.split("submitted run ", 1)[1].split()[0]
    shown = agent(deployed, "show", run_id, "--json")
    assert shown.returncode == 0, shown.stderr
    return dict(json.loads(shown.stdout))


def test_a_run_submitted_from_the_host_succeeds_on_a_stack_worker(deployed, finished_run):
    assert finished_run["state"] == "succeeded"
    worker = str(finished_run["worker"])
    hosts = {str(c["Config"]["Hostname"]) for c in deployed.stack.containers("cpu")}
    assert worker.startswith("cpu@") and worker.split("@", 1)[1] in hosts
    log = agent(deployed, "logs", str(finished_run["run_id"]))
    assert log.returncode == 0, log.stderr
    assert f"trained lr=0.5 epochs=2 on {worker.split('@', 1)[1]}" in log.stdout


def test_the_exporter_counts_the_workers_and_the_run(deployed, finished_run):
    def counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        samples = metrics(deployed)
        ended = samples.get(("celery_agent_runs_ended_total", (("state", "succeeded"),)), 0)
        return samples if ended >= 1 else None

    samples = wait_for(
        "the run counted by the exporter", counted, timeout=60, every=1.0, retry_on=(Exception,)
    )
    assert samples[("celery_agent_up", ())] == 1
    assert samples[("celery_agent_queue_workers", (("queue", "default"),))] == 2
    assert samples[("celery_agent_queue_workers", (("queue", "services"),))] == 1
    assert samples[("celery_agent_runs_ended_total", (("state", "succeeded"),))] == 1
    assert samples[("celery_agent_queue_depth", (("queue", "default"),))] == 0


def test_the_health_probe_passes_for_a_live_worker_and_fails_for_an_unknown_one(deployed):
    alive = deployed.stack.execute("cpu", "celery-agent", "health", "--worker", "cpu@%h")
    assert alive.returncode == 0, alive.stdout + alive.stderr
    assert "is alive" in alive.stdout
    unknown = deployed.stack.execute("cpu", "celery-agent", "health", "--worker", "gpu7@%h")
    assert unknown.returncode == 1
    assert "gpu7@" in unknown.stderr and "no current heartbeat" in unknown.stderr
    # the compose file's own health check is that probe (its first one 30 s after the start):
    # both workers turn healthy
    wait_for(
        "both cpu workers healthy",
        lambda: deployed.stack.health("cpu") == ["healthy", "healthy"],
        timeout=150,
        every=1.0,
        retry_on=(Exception,),
    )


def test_flower_answers_with_the_agent_pages(deployed):
    status, body = wait_for(
        "Flower",
        lambda: http_get(deployed.flower + "/"),
        timeout=60,
        every=1.0,
        retry_on=(Exception,),
    )
    assert status == 200 and "Flower" in body
    status, body = http_get(deployed.flower + "/celery-agent/hardware")
    assert status == 200


def test_the_gpu_and_rabbitmq_profiles_are_valid_compose(deployed):
    # no GPU and no rabbitmq image here: compose itself checks what it would start
    assert "ERROR" not in deployed.stack.validate("gpu", "rabbitmq")


def test_down_leaves_no_containers_networks_or_volumes(deployed):
    assert len(deployed.stack.containers()) == 7  # redis, 2 cpu, services, beat, flower, exporter
    deployed.stack.down()
    assert deployed.stack.leftovers() == {}
