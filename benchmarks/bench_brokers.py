"""Redis and RabbitMQ as the broker, side by side in one run: dispatch latency and throughput.

``python -m benchmarks.bench_brokers [--runs N] [--amqp URL]`` starts a redis-server (the state
store and result backend for both) and, unless ``--amqp`` names one, a RabbitMQ node of its own
(``scripts/rabbitmq``); one agent worker per broker (concurrency 2, local executor, a script that
prints one line). In alternating blocks (Redis, RabbitMQ, RabbitMQ, Redis) it measures dispatch
(submit -> first line, ``timings.first_line`` of the record, runs one after another) and
throughput (runs sent at once, runs per second from the first send to the last result). Prints
a table with each broker's medians and the ratio RabbitMQ / Redis.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .cluster import ROOT, Cluster, Worker
from .report import median

JOB = "print('first line', flush=True)\n"


def start_rabbitmq(root: Path) -> tuple[str, dict[str, str]]:
    """A RabbitMQ node of its own (scripts/rabbitmq); its URL and the environment to stop it."""
    from celery_agent.embedded import free_port

    env = dict(os.environ, RABBITMQ_PORT=str(free_port()), RABBITMQ_DIST_PORT=str(free_port()),
               CELERY_AGENT_RABBITMQ_DIR=str(root / "rabbitmq"))  # fmt: skip
    done = subprocess.run([str(ROOT / "scripts" / "rabbitmq"), "start"], env=env, text=True,
                          capture_output=True, timeout=180, check=True)  # fmt: skip
    return done.stdout.strip(), env


def use_broker(redis_url: str, broker: str | None) -> None:
    """Point this process's app at ``broker`` (None: Redis carries the messages)."""
    from celery_agent.app import use_environment

    os.environ["CELERY_AGENT_REDIS_URL"] = redis_url
    if broker:
        os.environ["CELERY_BROKER_URL"] = broker
    else:
        os.environ.pop("CELERY_BROKER_URL", None)
    use_environment()


def block(spec: dict, runs: int) -> tuple[list[float], float]:
    """Dispatch samples of ``runs`` runs one after another, then runs/s of ``runs`` sent at once."""
    from celery_agent import submit_task

    firsts = []
    for _ in range(runs):
        out = submit_task.apply_async([spec]).get(timeout=60)
        firsts.append(float(out["timings"]["first_line"]))
    t0 = time.perf_counter()
    results = [submit_task.apply_async([spec]) for _ in range(runs)]
    for r in results:
        r.get(timeout=120)
    return firsts, runs / (time.perf_counter() - t0)


def measure(cluster: Cluster, amqp: str, runs: int, root: Path) -> dict[str, dict[str, list]]:
    """Both brokers, blocks in ABBA order; broker -> {"dispatch": [...], "throughput": [...]}."""
    repo = root / "repo"
    repo.mkdir()
    (repo / "job.py").write_text(JOB)
    from celery_agent.testing import git

    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "job")
    brokers = {"redis": None, "rabbitmq": amqp}
    for name, url in brokers.items():
        env = {"CELERY_BROKER_URL": url} if url else {}
        cluster.workers.append(
            Worker("celery_agent", f"b-{name}", root / name, cluster.url, 2, env)
        )
        cluster.workers[-1].start()
    out: dict[str, dict[str, list]] = {n: {"dispatch": [], "throughput": []} for n in brokers}
    for name in ["redis", "rabbitmq", "rabbitmq", "redis"]:
        use_broker(cluster.url, brokers[name])
        spec = {"repo": str(repo), "entry": "job.py", "queue": f"b-{name}", "executor": "local"}
        block(spec, 3)  # warm: clone cache, pool processes
        firsts, rate = block(spec, runs)
        out[name]["dispatch"] += firsts
        out[name]["throughput"].append(rate)
    return out


def table(out: dict[str, dict[str, list]]) -> str:
    """The medians and the ratio RabbitMQ / Redis."""
    d = {n: median(v["dispatch"]) * 1000 for n, v in out.items()}
    t = {n: median(v["throughput"]) for n, v in out.items()}
    return "\n".join([
        f"{'metric':<30}{'Redis':>10}{'RabbitMQ':>10}{'ratio':>8}",
        f"{'dispatch p50 (ms)':<30}{d['redis']:>10.1f}{d['rabbitmq']:>10.1f}"
        f"{d['rabbitmq'] / d['redis']:>7.2f}x",
        f"{'throughput (runs/s)':<30}{t['redis']:>10.2f}{t['rabbitmq']:>10.2f}"
        f"{t['rabbitmq'] / t['redis']:>7.2f}x",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40, help="runs per block (4 blocks)")
    ap.add_argument("--amqp", default=None, help="a RabbitMQ URL to use instead of starting one")
    args = ap.parse_args(argv)
    os.environ.pop("CELERY_BROKER_URL", None)  # (the Redis worker must not inherit one)
    with tempfile.TemporaryDirectory(prefix="brokers-") as tmp:
        root = Path(tmp)
        cluster = Cluster(root).start()
        amqp, stop_env = (args.amqp, None) if args.amqp else start_rabbitmq(root)
        try:
            out = measure(cluster, amqp, args.runs, root)
        finally:
            cluster.close()
            if stop_env is not None:
                subprocess.run([str(ROOT / "scripts" / "rabbitmq"), "stop"], env=stop_env,
                               capture_output=True, timeout=120)  # fmt: skip
    sys.stdout.write(f"brokers, {args.runs} runs per block x 4, load {os.getloadavg()[0]:.2f}\n")
    sys.stdout.write(table(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
