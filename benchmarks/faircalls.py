"""The gate's writes alone (see :mod:`.bench_faircost`): submit, claim and end of a run against
the benchmark's Redis, with fair order off, riding on the store's round trips (now) and in round
trips of their own (before)."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable

from celery_agent.fairorder import FairOrder
from celery_agent.state import RunStore

from .report import Row

MODES = ("off", "now", "before")
ROUND = 50  #: runs per mode in a round (rounds alternate the modes)
SPEC = {"repo": "/bench/repo", "entry": "trivial.py", "args": ["x"] * 8}


def rows(store: RunStore, n: int) -> list[Row]:
    """Median seconds per submit, claim and end write of each mode; ``n`` runs per mode."""
    fair = FairOrder(store)
    times: dict[str, dict[str, list[float]]] = {m: {"submit": [], "claim": [], "end": []}
                                                for m in MODES}  # fmt: skip
    for i in range(max(1, n // ROUND)):
        for mode in MODES if i % 2 == 0 else MODES[::-1]:
            _round(store, fair, mode, times[mode])
    out = []
    for step, what in (("submit", "record a run"), ("claim", "claim a delivery"),
                       ("end", "end write")):  # fmt: skip
        off = statistics.median(times["off"][step])
        for mode, label in (("now", "gate riding on it"), ("before", "gate in its own trip")):
            took = statistics.median(times[mode][step])
            out.append(Row(f"  {what}: {label} (vs gate off)", took, off, "ms", "ratio", "-",
                           None))  # fmt: skip
    return out


def _round(store: RunStore, fair: FairOrder, mode: str, times: dict[str, list[float]]) -> None:
    queue, user = f"bench-gate-{mode}", "bench"
    ids = [uuid.uuid4().hex for _ in range(ROUND)]
    steps = (("submit", lambda i: _submit(store, fair, mode, i, queue, user)),
             ("claim", lambda i: _claim(store, fair, mode, i, queue, user)),
             ("end", lambda i: _end(store, fair, mode, i)))  # fmt: skip
    for step, call in steps:
        for run_id in ids:
            times[step].append(_timed(call, run_id))


def _submit(store: RunStore, fair: FairOrder, mode: str, run_id: str, queue: str,
            user: str) -> None:  # fmt: skip
    if mode == "now":
        store.create_run(run_id, SPEC, queue, fair.joining(run_id, queue, user), user=user)
        return
    store.create_run(run_id, SPEC, queue, user=user)
    if mode == "before":
        fair.enqueue(run_id, queue, user)


def _claim(store: RunStore, fair: FairOrder, mode: str, run_id: str, queue: str,
           user: str) -> None:  # fmt: skip
    token = f"bench|h|{run_id}"
    asking = fair.asking(run_id, queue, user, "", 0, 0, token) if mode == "now" else None
    got = store.claim_view(run_id, token, 60, "bench", asking)[0]
    assert got, f"{run_id} was not claimed"
    verdict = asking.verdict() if asking is not None else None
    if verdict is None and mode != "off":
        verdict = fair.gate(run_id, queue, user, "", 0, 0, token)
    assert verdict is None or verdict.admitted, verdict
    store.transition(run_id, "preparing")


def _end(store: RunStore, fair: FairOrder, mode: str, run_id: str) -> None:
    pipe = store.r.pipeline(transaction=False)
    store.transition(run_id, "succeeded", pipe=pipe)
    store.release_claim(run_id, f"bench|h|{run_id}", pipe=pipe)
    if mode != "off":  # (the wake rode on the end write before too)
        fair.wake_on(pipe)
    pipe.execute()


def _timed(step: Callable[[str], None], run_id: str) -> float:
    t0 = time.perf_counter()
    step(run_id)
    return time.perf_counter() - t0
