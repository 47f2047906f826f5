"""Worker-loss recovery on default settings: from a worker's death to its run running again.

``python -m benchmarks.bench_recovery [--kills N] [--old N] [--broker URL]`` starts two workers
(concurrency 1, default heartbeat, claim and sweep timings) on one queue, submits a long run,
kills the whole process group of the worker that runs it (a dead machine) and times how long until
the run's script starts again on the other worker; then cancels the run, restarts the killed
worker and repeats. Baseline, in the same run: ``--old`` kills (1 by default) with the earlier
defaults (5 s heartbeats, 60 s claims, 30 s sweeps). ``--broker amqp://...`` sends the messages
through RabbitMQ (state and results stay in Redis). Prints a table: median and max per setting.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from .cluster import Cluster, Worker
from .report import median
from .soak import make_repo

logger = logging.getLogger("benchmarks.bench_recovery")

QUEUE = "recovery"
OLD = {"CELERY_AGENT_HEARTBEAT_INTERVAL": "5", "CELERY_AGENT_CLAIM_TTL": "60",
       "CELERY_AGENT_SWEEP_INTERVAL": "30"}  # fmt: skip
GOAL = 20.0  #: seconds from the death to the run running again


class Pair:
    """Two workers on :data:`QUEUE` with the same settings; a killed one is started again."""

    def __init__(self, cluster: Cluster, env: dict[str, str], tag: str) -> None:
        self.cluster, self.env, self.tag = cluster, env, tag
        self.workers = [self._start(i) for i in range(2)]

    def _start(self, index: int) -> Worker:
        home = self.cluster.root / f"home-{self.tag}-{index}"
        w = Worker("celery_agent", f"{QUEUE}-{self.tag}", home, self.cluster.url, 1, self.env)
        w.argv[w.argv.index("-n") + 1] = f"{self.tag}{index}@%h"
        return w.start()

    def kill_holder(self, name: str) -> int:
        """Kill the whole group of the worker named ``name``; returns its index."""
        index = next(i for i in range(2) if name.startswith(f"{self.tag}{i}@"))
        proc = self.workers[index].proc
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return index

    def restart(self, index: int) -> None:
        """Start the killed worker again (as a supervisor would)."""
        self.workers[index] = self._start(index)

    def stop(self) -> None:
        """Warm shutdown of both."""
        for w in self.workers:
            w.stop()


def starts(path: Path, run_id: str) -> int:
    """How many times the run's script started."""
    if not path.exists():
        return 0
    return sum(line.split()[:2] == ["start", run_id] for line in path.read_text().splitlines())


def wait(check, timeout: float, what: str) -> None:
    """Poll ``check`` until true; raise naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f}s")
        time.sleep(0.05)


def one_kill(pair: Pair, store, spec: dict, path: Path, timeout: float) -> float:
    """Submit, kill the worker running it, time until it runs again; cancel; restart."""
    from celery_agent import submit_task

    run_id = submit_task.apply_async([spec], queue=pair.workers[0].queue).id
    wait(lambda: starts(path, run_id) == 1, 60, f"run {run_id} starting")
    index = pair.kill_holder(str(store.get(run_id)["worker"]))
    t0 = time.monotonic()
    wait(lambda: starts(path, run_id) == 2, timeout, f"run {run_id} running again")
    back = time.monotonic() - t0
    store.request_abort(run_id)
    wait(lambda: store.get(run_id).get("state") == "aborted", 60, f"run {run_id} cancelled")
    pair.restart(index)
    return back


def measure(cluster: Cluster, env: dict[str, str], tag: str, kills: int, root: Path) -> list[float]:
    """Recovery times of ``kills`` kills with the settings in ``env``."""
    from celery_agent.app import get_store

    path = root / f"starts-{tag}.txt"
    (root / tag).mkdir()
    spec = {"repo": str(make_repo(root / tag)), "entry": "job.py", "executor": "local",
            "queue": f"{QUEUE}-{tag}", "max_attempts": 3,
            "env": {"STARTS": str(path), "WORK": "600"}}  # fmt: skip
    pair = Pair(cluster, env, tag)
    try:
        timeout = 60.0 if tag == "defaults" else 300.0
        out = []
        for i in range(kills):
            out.append(one_kill(pair, get_store(), spec, path, timeout))
            logger.warning("%s kill %d: back in %.1fs", tag, i + 1, out[-1])
        return out
    finally:
        pair.stop()


def table(results: dict[str, list[float]]) -> str:
    """Median and max recovery per setting."""
    lines = [f"{'settings':<26}{'kills':>6}{'median s':>10}{'max s':>8}  target"]
    for tag, times in results.items():
        target = (
            f"< {GOAL:.0f} s: {'ok' if max(times) < GOAL else 'FAIL'}" if tag == "defaults" else "-"
        )
        lines.append(f"{tag:<26}{len(times):>6}{median(times):>10.1f}{max(times):>8.1f}  {target}")
    base, new = results.get("old defaults (baseline)"), results.get("defaults")
    if base and new:
        lines.append(f"median ratio defaults / baseline: {median(new) / median(base):.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; exit status 1 when a kill on defaults missed the goal."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10, help="kills on the default settings")
    ap.add_argument("--old", type=int, default=1, help="kills on the earlier defaults (baseline)")
    ap.add_argument("--broker", default=None, help="a broker URL (amqp://...) instead of Redis")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="recovery-") as tmp:
        root = Path(tmp)
        cluster = Cluster(root).start()
        os.environ["CELERY_AGENT_REDIS_URL"] = cluster.url
        extra = {"CELERY_BROKER_URL": args.broker} if args.broker else {}
        os.environ.update(extra)
        from celery_agent.app import use_environment

        use_environment()
        try:
            results = {"defaults": measure(cluster, extra, "defaults", args.kills, root)}
            if args.old:
                results["old defaults (baseline)"] = measure(
                    cluster, OLD | extra, "old", args.old, root
                )
        finally:
            cluster.close()
    broker = "RabbitMQ" if args.broker else "Redis"
    sys.stdout.write(f"worker-loss recovery, broker {broker}, load {os.getloadavg()[0]:.2f}\n")
    sys.stdout.write(table(results) + "\n")
    return 0 if max(results["defaults"]) < GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
