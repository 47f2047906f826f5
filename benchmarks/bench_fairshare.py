"""Fair order on a shared queue: how long a second user's runs wait behind a first user's backlog.

``python -m benchmarks.bench_fairshare [--backlog N] [--runs M] [--work S] [--rounds R]`` starts one
worker (concurrency 4) on one queue; user A submits N short runs (0.2 s of work), then user B
submits M. B's wait is each run's ``preparing_at - submitted_at``. Baseline, in the same run: the
same N + M runs with B's submitted under A's name, which is the queue's first-in, first-out order
(one user: the gate never holds a run back). Rounds alternate FIFO and fair. Prints a table: B's
median and longest wait, when A's backlog was through, and the ratio of B's median waits.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from .cluster import Cluster
from .report import median
from .soak import make_repo

logger = logging.getLogger("benchmarks.bench_fairshare")

QUEUE = "shared"
GOAL = 0.1  #: B's median wait, fair over FIFO


def one_round(store, spec: dict, tag: str, backlog: int, runs: int) -> dict[str, float]:
    """A's backlog then B's runs (B named A in the FIFO round); B's waits and A's end."""
    from celery_agent import submit_task

    a, b = f"a-{tag}", (f"a-{tag}" if tag.startswith("fifo") else f"b-{tag}")
    send = submit_task.apply_async
    a_ids = [send([spec | {"user": a}], ignore_result=True).id for _ in range(backlog)]
    b_ids = [send([spec | {"user": b}], ignore_result=True).id for _ in range(runs)]
    records = wait_ended(store, a_ids + b_ids, timeout=backlog * 3 + 120)
    waits = [records[i]["preparing_at"] - records[i]["submitted_at"] for i in b_ids]
    a_start = max(records[i]["preparing_at"] for i in a_ids) - records[a_ids[0]]["submitted_at"]
    return {"b_median": median(waits), "b_max": max(waits), "a_last_start": a_start}


def wait_ended(store, ids: list[str], timeout: float) -> dict[str, dict]:
    """The records of ``ids`` once every one ended (TimeoutError naming how many did not)."""
    deadline = time.monotonic() + timeout
    while True:
        records = {i: store.get(i) for i in ids}
        left = [i for i, r in records.items() if r.get("state") not in ("succeeded", "failed")]
        if not left:
            bad = [i for i, r in records.items() if r["state"] != "succeeded"]
            if bad:
                raise RuntimeError(f"{len(bad)} runs failed, e.g. {records[bad[0]].get('error')}")
            return records
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(left)} of {len(ids)} runs had not ended after {timeout:.0f}s")
        time.sleep(0.2)


def table(results: dict[str, list[dict[str, float]]]) -> str:
    """B's waits per order, and the ratio of medians."""
    lines = [f"{'order':<8}{'rounds':>7}{'B median s':>12}{'B max s':>9}{'A last start s':>16}"]
    for tag, rows in results.items():
        lines.append(
            f"{tag:<8}{len(rows):>7}{median([r['b_median'] for r in rows]):>12.2f}"
            f"{max(r['b_max'] for r in rows):>9.2f}"
            f"{median([r['a_last_start'] for r in rows]):>16.2f}"
        )
    fair = median([r["b_median"] for r in results["fair"]])
    fifo = median([r["b_median"] for r in results["fifo"]])
    ratio = fair / fifo
    verdict = "ok" if ratio < GOAL else "FAIL"
    lines.append(f"B median wait, fair / FIFO: {ratio:.3f}x (goal < {GOAL}x: {verdict})")
    return "\n".join(lines)


def measure(root: Path, backlog: int, runs: int, work: float, rounds: int) -> dict[str, list]:
    """The rounds on one worker (concurrency 4) of a fresh cluster."""
    cluster = Cluster(root).start()
    os.environ["CELERY_AGENT_REDIS_URL"] = cluster.url
    from celery_agent.app import get_store, use_environment

    use_environment()
    try:
        cluster.worker("celery_agent", QUEUE, concurrency=4)
        path = root / "starts.txt"
        spec = {"repo": str(make_repo(root)), "entry": "job.py", "executor": "local",
                "queue": QUEUE, "env": {"STARTS": str(path), "WORK": str(work)}}  # fmt: skip
        results: dict[str, list] = {"fifo": [], "fair": []}
        for i in range(rounds):
            for tag in ("fifo", "fair"):
                row = one_round(get_store(), spec, f"{tag}{i}", backlog, runs)
                logger.warning("%s round %d: %s", tag, i + 1, row)
                results[tag].append(row)
        return results
    finally:
        cluster.close()


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; exit status 1 when the goal was missed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backlog", type=int, default=100, help="user A's runs, submitted first")
    ap.add_argument("--runs", type=int, default=5, help="user B's runs, submitted after")
    ap.add_argument("--work", type=float, default=0.2, help="seconds each run works")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of FIFO then fair")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="fairshare-") as tmp:
        results = measure(Path(tmp), args.backlog, args.runs, args.work, args.rounds)
    sys.stdout.write(
        f"fair order: {args.backlog} runs of A, then {args.runs} of B, one worker, concurrency 4, "
        f"load {os.getloadavg()[0]:.2f}\n"
    )
    sys.stdout.write(table(results) + "\n")
    fair = median([r["b_median"] for r in results["fair"]])
    return 0 if fair / median([r["b_median"] for r in results["fifo"]]) < GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
