"""Soak under chaos: runs through three workers while workers and pool processes are killed.

``python -m benchmarks.soak [--runs N] [--work S] [--quick] [--broker URL]`` submits N runs to one queue served by
three workers (short heartbeats, claims and sweeps) and a beat, kills a worker (whole process group,
a dead machine), its main process only, or one pool process now and then, restarts killed workers, and prints how many runs
were submitted, succeeded, lost, failed and started twice at once, and how long recovery took.
The runs alternate between two users, the first with a quota of :data:`QUOTA` runs at once (fair
order and the quota at work through the kills): the soak also prints the most of that user's runs
seen running at once (from the scripts' own start and end lines).
``--broker amqp://...`` sends the messages through RabbitMQ (state stays in Redis).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from .cluster import Cluster, Worker, die_with_parent

logger = logging.getLogger("benchmarks.soak")

USERS = ("soak-a", "soak-b")  #: the runs alternate between them
QUOTA = 2  #: runs at once of the first user

FAST = {"CELERY_AGENT_HEARTBEAT_INTERVAL": "1", "CELERY_AGENT_CLAIM_TTL": "2",
        "CELERY_AGENT_SWEEP_INTERVAL": "1"}  # fmt: skip
JOB = """\
import os, sys, time
path, rid = os.environ["STARTS"], os.environ["CELERY_AGENT_RUN_ID"]
with open(path, "a") as fh:
    fh.write(f"start {rid} {os.getpid()} {time.time()} {os.environ.get('SOAK_USER', '-')}\\n")
time.sleep(float(os.environ["WORK"]))
with open(path, "a") as fh:
    fh.write(f"end {rid} {os.getpid()} {time.time()} {os.environ.get('SOAK_USER', '-')}\\n")
"""


def make_repo(root: Path) -> Path:
    """A git repository holding job.py."""
    repo = root / "repo"
    repo.mkdir()
    (repo / "job.py").write_text(JOB)
    env = dict(os.environ, GIT_AUTHOR_NAME="s", GIT_AUTHOR_EMAIL="s@s", GIT_COMMITTER_NAME="s",
               GIT_COMMITTER_EMAIL="s@s")  # fmt: skip
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "job"]):
        subprocess.run(["git", *argv], cwd=repo, env=env, check=True)
    return repo


def start_worker(cluster: Cluster, index: int) -> Worker:
    """Worker ``index`` (same name across restarts, as a supervisor would restart it)."""
    w = Worker("celery_agent", "soak", cluster.root / f"home-{index}", cluster.url, 2, FAST)
    w.argv[w.argv.index("-n") + 1] = f"soak{index}@%h"
    return w.start()


def start_beat(cluster: Cluster) -> subprocess.Popen[bytes]:
    """A celery beat scheduling the sweep every second."""
    env = dict(os.environ, CELERY_AGENT_REDIS_URL=cluster.url, **FAST)
    argv = [sys.executable, "-m", "celery", "-A", "celery_agent", "beat", "-s",
            str(cluster.root / "beat-schedule")]  # fmt: skip
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=die_with_parent)  # fmt: skip


class Chaos:
    """Kills a random worker or pool process every ``every`` seconds; notes what must recover."""

    def __init__(self, cluster: Cluster, workers: list[Worker], store, every: float) -> None:
        self.cluster, self.workers, self.store, self.every = cluster, workers, store, every
        self.kills: list[str] = []
        self.pending: dict[str, tuple[float, int]] = {}  #: run id -> (kill time, attempt then)
        self.recoveries: list[float] = []
        self.stop = threading.Event()  #: no more kills
        self.finished = threading.Event()  #: the soak is over: the thread may end
        self.lock = threading.Lock()

    def loop(self) -> None:
        """Kill, restart, repeat until stopped; then live on until the soak is over: the workers
        this thread restarted get SIGTERM from the kernel when the thread that started them ends
        (their death signal is per thread), which would drain them before the last runs ran."""
        while not self.finished.wait(self.every):
            if not self.stop.is_set():
                self.strike(random.randrange(len(self.workers)))
            self.check()

    def strike(self, index: int) -> None:
        w = self.workers[index]
        assert w.proc is not None
        from celery_agent.app import get_registry

        runs = get_registry().current_runs(f"soak{index}@{os.uname().nodename}")
        for run_id in runs:
            with self.lock:
                self.pending[run_id] = (
                    time.monotonic(),
                    int(self.store.get(run_id).get("attempt") or 0),
                )
        children = psutil.Process(w.proc.pid).children()
        kind = random.choice(["pool process", "worker", "main process"] if children else ["worker"])
        self.kills.append(kind)
        if kind == "pool process":
            with contextlib.suppress(psutil.Error):
                random.choice(children).kill()
            return
        if kind == "worker":  # the whole machine gone
            os.killpg(w.proc.pid, signal.SIGKILL)
        else:  # only the worker's main process: its pool processes must stop their runs
            os.kill(w.proc.pid, signal.SIGKILL)
        w.proc.wait()
        self.workers[index] = start_worker(self.cluster, index)

    def check(self) -> None:
        """Note recovery times of runs that started again or ended since their kill."""
        with self.lock:
            for run_id, (t0, attempt) in list(self.pending.items()):
                record = self.store.get(run_id)
                again = int(record.get("attempt") or 0) > attempt
                if again or record.get("state") in ("lost", "failed"):
                    self.recoveries.append(time.monotonic() - t0)
                    del self.pending[run_id]


def count_starts(path: Path) -> tuple[dict[str, int], int]:
    """Starts per run, and how many starts overlapped a still-running start of the same run."""
    starts: dict[str, list[tuple[int, float]]] = {}
    ends: dict[int, float] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        kind, rid, pid, at = line.split()[:4]
        if kind == "start":
            starts.setdefault(rid, []).append((int(pid), float(at)))
        else:
            ends[int(pid)] = float(at)
    overlapping = 0
    for runs in starts.values():
        for (pid, _), (_, t1) in zip(runs, runs[1:], strict=False):
            overlapping += pid in ends and ends[pid] > t1
    return {rid: len(v) for rid, v in starts.items()}, overlapping


def most_at_once(path: Path, user: str) -> int:
    """The most runs of ``user`` seen running at once: starts and ends their scripts wrote (a
    killed attempt wrote no end and is left out)."""
    began: dict[str, float] = {}
    spans = []
    for line in path.read_text().splitlines() if path.exists() else []:
        kind, _, pid, at, who = line.split()
        if who != user:
            continue
        if kind == "start":
            began[pid] = float(at)
        elif pid in began:
            spans.append((began.pop(pid), float(at)))
    return max((sum(s <= t < e for s, e in spans) for t, _ in spans), default=0)


def soak(
    runs: int, work: float, every: float, root: Path, broker: str | None = None
) -> dict[str, object]:
    """Run the soak; returns the counts."""
    cluster = Cluster(root).start()
    os.environ["CELERY_AGENT_REDIS_URL"] = cluster.url
    if broker:  # (the workers and beat inherit it)
        os.environ["CELERY_BROKER_URL"] = broker
    from celery_agent import submit_task
    from celery_agent.app import get_store, use_environment
    from celery_agent.quotas import Quotas, scope

    use_environment()
    store, starts = get_store(), root / "starts.txt"
    Quotas(store).set(scope("user", USERS[0]), runs=QUOTA)
    beat = start_beat(cluster)
    try:
        workers = [start_worker(cluster, i) for i in range(3)]
        repo = make_repo(root)
        spec = {"repo": str(repo), "entry": "job.py", "queue": "soak", "executor": "local",
                "max_attempts": 3, "env": {"STARTS": str(starts), "WORK": str(work)}}  # fmt: skip
        t0 = time.monotonic()
        ids = [
            submit_task.apply_async([_as(spec, USERS[i % 2])], ignore_result=True).id
            for i in range(runs)
        ]
        chaos = Chaos(cluster, workers, store, every)
        thread = threading.Thread(target=chaos.loop, daemon=True)
        thread.start()
        states = wait_all(store, ids, timeout=runs * work + 300, chaos=chaos)
        chaos.stop.set()
        chaos.finished.set()
        thread.join()
        per_run, overlapping = count_starts(starts)
        result = report(runs, states, per_run, overlapping, chaos, time.monotonic() - t0)
        return result | {f"most_{USERS[0]}_at_once": most_at_once(starts, USERS[0]),
                         "quota": QUOTA}  # fmt: skip
    finally:
        beat.terminate()
        beat.wait()
        cluster.close()


def _as(spec: dict, user: str) -> dict:
    """``spec`` as ``user``'s run (the script writes the user beside its start and end)."""
    return spec | {"user": user, "env": spec["env"] | {"SOAK_USER": user}}


STALL = 90.0  #: seconds without any run ending, after the chaos stopped, that end the wait


def wait_all(store, ids: list[str], timeout: float, chaos: Chaos) -> dict[str, str]:
    """Wait until every run ended (or the timeout, or no progress for STALL seconds once the
    chaos stopped); returns run id -> state, and names the runs that did not end on stderr."""
    deadline, last, progress = time.monotonic() + timeout, -1, time.monotonic()
    while True:
        states = {rid: str(store.get(rid).get("state")) for rid in ids}
        ended = [
            s in ("succeeded", "failed", "lost", "aborted", "timed_out") for s in states.values()
        ]
        chaos.check()
        if sum(ended) != last:
            last, progress = sum(ended), time.monotonic()
        stalled = chaos.stop.is_set() and time.monotonic() - progress > STALL
        if all(ended) or stalled or time.monotonic() > deadline:
            for rid, s in states.items():
                if s != "succeeded":  # (what a person needs to see why)
                    record = store.get(rid)
                    keys = ("state", "attempt", "worker", "lost_attempts", "requeued_at",
                            "last_error", "error", "preparing_at", "waiting")  # fmt: skip
                    parked = [k for k in store.r.scan_iter(store.keys.fair_parked("*", "*"))
                              if store.r.zscore(k, rid) is not None]  # fmt: skip
                    logger.warning("%s %s: %s", "unfinished" if s not in (
                        "failed", "lost", "aborted", "timed_out") else s, rid,
                        {k: record.get(k) for k in keys} | {"parked in": parked})  # fmt: skip
            return states
        if sum(s == "succeeded" for s in states.values()) > len(ids) * 0.8:
            chaos.stop.set()  # let the tail finish in peace
        time.sleep(0.2)


def report(runs, states, per_run, overlapping, chaos: Chaos, seconds: float) -> dict[str, object]:
    """The soak's numbers."""
    count = {s: sum(v == s for v in states.values()) for s in set(states.values())}
    rec = sorted(chaos.recoveries)
    return {
        "submitted": runs, "succeeded": count.get("succeeded", 0), "lost": count.get("lost", 0),
        "failed": count.get("failed", 0), "unfinished": sum(
            s not in ("succeeded", "failed", "lost") for s in states.values()),
        "started_twice_at_once": overlapping, "restarts": sum(per_run.values()) - len(per_run),
        "kills": len(chaos.kills), "recovery_median_s": round(rec[len(rec) // 2], 2) if rec else None,
        "recovery_max_s": round(rec[-1], 2) if rec else None, "seconds": round(seconds, 1),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; exit status 1 when a run was lost or started twice at once."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--work", type=float, default=1.0, help="seconds each run works")
    ap.add_argument("--every", type=float, default=3.0, help="seconds between kills")
    ap.add_argument("--quick", action="store_true", help="18 runs of 3 s, a kill every 2 s")
    ap.add_argument("--broker", default=None, help="a broker URL (amqp://...) instead of Redis")
    args = ap.parse_args(argv)
    runs, work, every = (18, 3.0, 2.0) if args.quick else (args.runs, args.work, args.every)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        result = soak(runs, work, every, Path(tmp), args.broker)
    for name, value in result.items():
        sys.stdout.write(f"{name:>22}: {value}\n")
    over = result[f"most_{USERS[0]}_at_once"] > QUOTA  # type: ignore[operator]
    bad = result["started_twice_at_once"] or result["unfinished"] or over
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
