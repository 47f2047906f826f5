"""The Procfile, docker-compose and Kubernetes files start the same processes the same way."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from celery_agent.layout import gpu_worker, plan
from celery_agent.redisservice import LINGER

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DEFAULTED = re.compile(r"\$\{[A-Z_]+:-([^}]*)\}")
ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
HONCHO_KILL_WAIT = 5  #: seconds honcho gives its processes after SIGTERM before SIGKILL
#: the processes every deployment runs (Redis differs: the official image outside the Procfile;
#: GPU workers too: `celery-agent workers` in the Procfile, one container or pod per GPU elsewhere)
SHARED = ("services", "beat", "flower")
K8S = {"services": "celery-agent-services", "beat": "celery-agent-beat",
       "flower": "celery-agent-flower"}  # fmt: skip


def procfile() -> dict[str, str]:
    """name -> command of each Procfile line."""
    lines = (ROOT / "Procfile").read_text().splitlines()
    entries = [line.split(":", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {name.strip(): command.strip() for name, command in entries}


def fixed(argv: str | list[str]) -> list[str]:
    """A command's words with ``${VAR:-default}`` taken as its default, leaving out the words
    that depend on where it runs (a file path, $(VAR))."""
    words = shlex.split(argv) if isinstance(argv, str) else list(argv)
    while words and ASSIGNMENT.match(words[0]):  # the line's environment, not its command
        words.pop(0)
    words = [DEFAULTED.sub(r"\1", w) for w in words]
    return [w for w in words if "$" not in w and "/celerybeat-schedule" not in w]


def assignments(line: str) -> dict[str, str]:
    """The ``NAME=value`` words in front of a Procfile command, defaults taken."""
    out = {}
    for word in shlex.split(line):
        if not ASSIGNMENT.match(word):
            break
        name, _, value = DEFAULTED.sub(r"\1", word).partition("=")
        out[name] = value
    return out


def k8s_docs() -> dict[str, dict[str, Any]]:
    docs = [
        d
        for f in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
    ]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def planned(index: int) -> list[str]:
    """The words of the worker `celery-agent workers --per-gpu --loglevel INFO` starts for GPU
    ``index``, as a Procfile or compose file writes it (``celery`` instead of ``python -m celery``)."""
    return ["celery", *gpu_worker(index).argv(["--loglevel", "INFO"])[3:]]


def test_procfile_runs_redis_workers_services_beat_and_flower():
    procs = procfile()
    assert list(procs) == ["redis", "workers", "services", "beat", "flower"]
    assert procs["redis"].startswith("celery-agent redis")
    assert fixed(procs["workers"]) == ["celery-agent", "workers", "--per-gpu", "--loglevel", "INFO"]


def test_procfile_workers_drain_within_the_time_honcho_gives_them():
    # honcho SIGKILLs what still runs 5 s after its SIGTERM: runs still going by then must
    # already be back on their queues, and Redis (which waits for them) still up
    procs = procfile()
    for name in ("workers", "services"):
        grace = float(assignments(procs[name])["CELERY_AGENT_DRAIN_GRACE"])
        assert 0 <= grace <= HONCHO_KILL_WAIT - 3, name
    assert "--linger" not in procs["redis"] and LINGER < HONCHO_KILL_WAIT  # Redis goes first


def test_compose_services_start_the_procfile_commands():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    procs = procfile()
    for name in SHARED:
        assert fixed(compose[name]["command"]) == fixed(procs[name]), name
    for index in (0, 1):
        name = f"gpu{index}"
        assert fixed(compose[name]["command"]) == planned(index), name
        devices = compose[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["device_ids"] == [str(index)] and devices[0]["driver"] == "nvidia"
    for name in (*SHARED, "gpu0", "gpu1", "cpu"):
        assert compose[name]["environment"]["CELERY_AGENT_REDIS_URL"] == "redis://redis:6379/0"


def test_compose_cpu_workers_run_what_workers_runs_without_a_gpu():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    (cpu,) = plan(found=[]).workers
    assert fixed(compose["cpu"]["command"]) == ["celery", *cpu.argv(["--loglevel", "INFO"])[3:]]
    assert "deploy" not in compose["cpu"]  # no GPU reserved: it starts on any machine
    assert compose["cpu"]["profiles"] == ["cpu"]
    assert compose["gpu0"]["profiles"] == compose["gpu1"]["profiles"] == ["gpu"]


def test_compose_workers_health_check_is_their_own_liveness_probe():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    for name in ("gpu0", "gpu1", "cpu"):
        words = fixed(compose[name]["command"])
        worker = words[words.index("-n") + 1]
        assert compose[name]["healthcheck"]["test"] == [
            "CMD", "celery-agent", "health", "--worker", worker
        ], name  # fmt: skip
        assert compose[name]["depends_on"]["redis"] == {"condition": "service_healthy"}


def test_compose_without_a_registry_runs_the_procfile_redis_from_the_agent_image():
    compose = yaml.safe_load((DEPLOY / "docker-compose.noregistry.yml").read_text())["services"]
    redis = compose["redis"]
    assert redis["image"] == "${CELERY_AGENT_IMAGE:-celery-agent}"
    words = fixed(redis["command"])
    assert words[:2] == fixed(procfile()["redis"])[:2] == ["celery-agent", "redis"]
    assert words[words.index("--bind") + 1] == "0.0.0.0"  # the other containers reach it


def test_k8s_pods_start_the_procfile_commands():
    docs, procs = k8s_docs(), procfile()
    for proc, name in K8S.items():
        (container,) = docs[f"Deployment/{name}"]["spec"]["template"]["spec"]["containers"]
        assert fixed(container["command"]) == fixed(procs[proc]), name
        assert container["envFrom"] == [{"configMapRef": {"name": "celery-agent"}}]


def test_compose_and_k8s_run_the_exporter_on_its_port():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    words = ["celery-agent", "exporter", "--port", "9808"]
    assert fixed(compose["exporter"]["command"]) == words
    assert compose["exporter"]["environment"]["CELERY_AGENT_REDIS_URL"] == "redis://redis:6379/0"
    docs = k8s_docs()
    (container,) = docs["Deployment/celery-agent-exporter"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert fixed(container["command"]) == words
    assert container["envFrom"] == [{"configMapRef": {"name": "celery-agent"}}]
    service = docs["Service/celery-agent-exporter"]
    assert service["spec"]["ports"][0]["targetPort"] == 9808
    assert service["metadata"]["annotations"]["prometheus.io/port"] == "9808"


def test_k8s_gpu_worker_runs_the_planned_gpu0_worker_without_its_own_queue():
    (container,) = k8s_docs()["Deployment/celery-agent-gpu-worker"]["spec"]["template"]["spec"][
        "containers"
    ]
    words = planned(0)
    words[words.index("-Q") + 1] = "gpu,default"  # a pod's GPU 0 differs from pod to pod
    assert fixed(container["command"]) == words


def test_k8s_gpu_worker_gets_one_gpu_and_beat_one_replica():
    docs = k8s_docs()
    worker = docs["Deployment/celery-agent-gpu-worker"]["spec"]["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    beat = docs["Deployment/celery-agent-beat"]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"
    url = docs["ConfigMap/celery-agent"]["data"]["CELERY_AGENT_REDIS_URL"]
    assert url.startswith("redis://celery-agent-redis:") and "Service/celery-agent-redis" in docs


def test_honcho_accepts_the_procfile():
    done = subprocess.run([sys.executable, "-m", "honcho", "-f", str(ROOT / "Procfile"), "check"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "redis, workers, services, beat, flower" in done.stderr


def test_k8s_workers_are_never_killed_before_their_drained_runs_are_back_on_the_queue():
    # SIGTERM starts the drain: runs get the drain grace, then are stopped (TERM, the stop grace,
    # KILL) and requeued; the pod must outlive that, with a margin, or its runs end lost
    from celery_agent.settings import Settings

    defaults = Settings()
    workers = 0
    for name, doc in k8s_docs().items():
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        words = fixed(container["command"])
        if "worker" not in words and "services" not in words:
            continue
        workers += 1
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        drain = float(env.get("CELERY_AGENT_DRAIN_GRACE", defaults.drain_grace))
        needed = drain + defaults.grace + 30
        assert pod["terminationGracePeriodSeconds"] >= needed, (name, needed)
    assert workers == 2  # the GPU workers and the services worker


def test_the_keda_scaled_object_scales_the_gpu_workers_to_zero_by_runs_queued_and_running():
    docs = [
        d
        for f in sorted((DEPLOY / "k8s" / "keda").glob("*.yaml"))
        for d in yaml.safe_load_all(f.read_text())
    ]
    (scaled,) = [d for d in docs if d["kind"] == "ScaledObject"]
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] in {n.split("/")[1] for n in k8s_docs()}
    assert spec["scaleTargetRef"]["name"] == "celery-agent-gpu-worker"
    assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] >= 1
    (trigger,) = spec["triggers"]
    query = trigger["metadata"]["query"]
    for metric in ("celery_agent_queue_depth", "celery_agent_runs_active", "celery_agent_up"):
        assert metric in query
    worker = k8s_docs()["Deployment/celery-agent-gpu-worker"]["spec"]["template"]["spec"]
    queues = fixed(worker["containers"][0]["command"])
    served = queues[queues.index("-Q") + 1].replace(",", "|")
    assert query.count(f'queue=~"{served}"') == 2  # the queues the worker serves, both terms


def test_compose_workers_are_never_killed_before_their_drained_runs_are_back_on_the_queue():
    # as in k8s: docker stops a container SIGTERM, stop_grace_period, SIGKILL; the drain (its
    # grace, then the runs' stop grace) and the requeue must fit, with a margin
    from celery_agent.settings import Settings

    defaults = Settings()
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    workers = [
        n for n, s in compose.items() if "worker" in fixed(s.get("command", "")) or n == "services"
    ]
    assert sorted(workers) == ["cpu", "gpu0", "gpu1", "services"]
    for name in workers:
        env = compose[name]["environment"]
        drain = float(env.get("CELERY_AGENT_DRAIN_GRACE", defaults.drain_grace))
        stop = compose[name].get("stop_grace_period", "10s")
        assert stop.endswith("s") and float(stop[:-1]) >= drain + defaults.grace + 30, name


def test_k8s_workers_liveness_probe_is_their_health_check_and_survives_a_redis_outage():
    for path in ("gpu-worker.yaml", "services-worker.yaml"):
        (deployment,) = yaml.safe_load_all((DEPLOY / "k8s" / path).read_text())
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        words = container["command"]
        name = words[words.index("-n") + 1] if "-n" in words else "services@%h"
        probe = container["livenessProbe"]
        assert probe["exec"]["command"] == [
            "celery-agent", "health", "--worker", name, "--redis-down-ok"
        ], path  # fmt: skip
        # the CLI needs seconds to start on a busy node: Kubernetes' default of 1 s would fail it
        assert probe["timeoutSeconds"] >= 10, path
        # a worker is only declared dead after its heartbeat has been gone a while
        assert probe["periodSeconds"] * probe["failureThreshold"] >= 60, path
