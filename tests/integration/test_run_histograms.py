"""Run duration and queue wait histograms, lost attempts: kept by the run store's scripts in a
real Redis, and served by the exporter's collector as Prometheus histograms."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from celery_agent.exporter import FleetCollector
from celery_agent.state import RunStore

pytestmark = pytest.mark.integration

SPEC = {"repo": "/r", "entry": "t.py"}


def _own(store: RunStore) -> RunStore:
    """A store on the test Redis with a prefix of its own (its counters start at zero)."""
    return RunStore(store.r, prefix=f"h{uuid.uuid4().hex[:8]}")


def _run(own: RunStore, queue: str, submitted_at: float) -> str:
    run_id = uuid.uuid4().hex
    assert own.create_run(run_id, SPEC, queue, submitted_at=submitted_at)
    return run_id


def _samples(own: RunStore) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(own.r, own.keys, own.r))
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_start_observes_the_wait_and_an_end_the_duration_in_the_runs_queue(store):
    own = _own(store)
    run_id = _run(own, "gpu", submitted_at=1000.0)
    own.transition(run_id, "preparing", preparing_at=1003.0)  # waited 3 s: bucket le=5
    own.transition(run_id, "running", running_at=1010.0)
    own.transition(run_id, "succeeded", force=True, succeeded_at=1703.0)  # ran 700 s: le=1800
    hist = own.r.hgetall(own.keys.run_histograms())
    assert hist == {
        "wait|gpu|5": "1",
        "wait|gpu|sum": "3",
        "duration|gpu|1800": "1",
        "duration|gpu|sum": "700",
    }
    got = _samples(own)
    wait = "celery_agent_run_queue_wait_seconds"
    assert got[(f"{wait}_bucket", (("le", "2.5"), ("queue", "gpu")))] == 0
    assert got[(f"{wait}_bucket", (("le", "5.0"), ("queue", "gpu")))] == 1
    assert got[(f"{wait}_bucket", (("le", "+Inf"), ("queue", "gpu")))] == 1
    assert got[(f"{wait}_count", (("queue", "gpu"),))] == 1
    assert got[(f"{wait}_sum", (("queue", "gpu"),))] == 3.0
    duration = "celery_agent_run_duration_seconds"
    assert got[(f"{duration}_bucket", (("le", "600.0"), ("queue", "gpu")))] == 0
    assert got[(f"{duration}_bucket", (("le", "1800.0"), ("queue", "gpu")))] == 1
    assert got[(f"{duration}_sum", (("queue", "gpu"),))] == 700.0


def test_a_requeued_run_waits_from_its_return_and_unstarted_or_lost_runs_have_no_duration(store):
    own = _own(store)
    drained = _run(own, "cpu", submitted_at=1000.0)
    own.transition(drained, "preparing", preparing_at=1000.5)
    own.transition(drained, "queued", force=True, requeued_at=2000.0)  # drained back
    own.transition(drained, "preparing", preparing_at=2040.0)  # waited 40 s since its return
    cancelled = _run(own, "cpu", submitted_at=1000.0)
    own.transition(cancelled, "aborted", aborted_at=1100.0)  # never started: no duration
    lost = _run(own, "cpu", submitted_at=1000.0)
    own.transition(lost, "preparing", preparing_at=1001.0)
    assert own.requeue_lost(lost, 1, "worker lost") == "lost"  # out of attempts
    hist = own.r.hgetall(own.keys.run_histograms())
    assert {k: v for k, v in hist.items() if k.startswith("wait|")} == {
        "wait|cpu|0.5": "1",
        "wait|cpu|60": "1",
        "wait|cpu|1": "1",
        "wait|cpu|sum": "41.5",
    }
    assert not [k for k in hist if k.startswith("duration|")]
    counts = own.r.hgetall(own.keys.run_counts())
    assert counts["lost_attempts"] == "1" and counts["lost"] == "1"
    assert own.count_lost_attempt(drained) == 1  # a delivery that took a dead runner's run over
    assert _samples(own)[("celery_agent_runs_lost_total", ())] == 2


def test_clocks_apart_count_a_negative_wait_as_zero(store):
    own = _own(store)
    run_id = _run(own, "q", submitted_at=1000.0)
    own.transition(run_id, "preparing", preparing_at=999.0)  # the worker's clock is behind
    assert own.r.hgetall(own.keys.run_histograms()) == {"wait|q|0.1": "1", "wait|q|sum": "0"}
