"""Histograms in Redis hashes (:mod:`celery_agent.histograms`) and the env cache outcome counts
(:mod:`celery_agent.envstats`), with a pipeline stand-in that records commands."""

from __future__ import annotations

from typing import Any

import pytest

from celery_agent import envstats, histograms
from celery_agent.histograms import ENV_BUILD, QUEUE_WAIT, RUN_DURATION
from celery_agent.keys import Keys


class Recorder:
    """Applies HINCRBY / HINCRBYFLOAT to dicts, as Redis would."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, float]] = {}

    def hincrby(self, key: str, field: str, n: int) -> None:
        self.hashes.setdefault(key, {})[field] = self.hashes.get(key, {}).get(field, 0) + n

    hincrbyfloat = hincrby

    def raw(self, key: str) -> dict[str, str]:
        return {k: repr(v) for k, v in self.hashes[key].items()}


@pytest.mark.parametrize(
    ("value", "bound"),
    [(0.0, "0.1"), (0.1, "0.1"), (0.11, "0.25"), (60.0, "60"), (86_400.0, "86400"),
     (86_400.5, "+Inf")],
)  # fmt: skip
def test_a_value_falls_in_the_first_bucket_whose_bound_it_does_not_exceed(value, bound):
    assert QUEUE_WAIT.bucket(value) == bound


def test_every_histogram_has_ascending_bounds_ending_in_inf():
    for h in (RUN_DURATION, QUEUE_WAIT, ENV_BUILD):
        assert list(h.upper) == sorted(set(h.upper)) and h.bounds[-1] == "+Inf"


def test_families_add_the_buckets_up_and_count_the_observations():
    pipe = Recorder()
    for value in (3, 4, 700, 10**9):
        histograms.observe(pipe, "k", RUN_DURATION, "gpu", value)
    histograms.observe(pipe, "k", RUN_DURATION, "cpu", -2)  # clocks apart: counted as 0
    (family,) = histograms.families(pipe.raw("k"), [RUN_DURATION])
    got = {(s.name, s.labels.get("queue"), s.labels.get("le")): s.value for s in family.samples}
    name = "celery_agent_run_duration_seconds"
    assert got[(f"{name}_bucket", "gpu", "1.0")] == 0
    assert got[(f"{name}_bucket", "gpu", "5.0")] == 2
    assert got[(f"{name}_bucket", "gpu", "1800.0")] == 3
    assert got[(f"{name}_bucket", "gpu", "+Inf")] == 4
    assert got[(f"{name}_count", "gpu", None)] == 4
    assert got[(f"{name}_sum", "gpu", None)] == 3 + 4 + 700 + 10**9
    assert got[(f"{name}_bucket", "cpu", "1.0")] == 1 and got[(f"{name}_sum", "cpu", None)] == 0


def test_a_field_that_is_not_a_number_is_skipped_and_other_series_left_alone():
    raw = {"wait|q|1": "2", "wait|q|5": "oops", "wait|q|sum": "1.5", "duration|q|5": "7"}
    (family,) = histograms.families(raw, [QUEUE_WAIT])
    got = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert got[("celery_agent_run_queue_wait_seconds_count", None)] == 2
    assert got[("celery_agent_run_queue_wait_seconds_bucket", "10.0")] == 2


def test_env_cache_outcomes_count_hits_misses_failures_and_build_times_per_executor():
    pipe, keys = Recorder(), Keys("t")
    for outcome, seconds in (("hit", 0.01), ("hit", 0.02), ("built", 42.0), ("failed", 3.0)):
        envstats.count(pipe, keys, "venv", outcome, seconds)
    envstats.count(pipe, keys, "conda", "built", 200.0)
    assert pipe.hashes[keys.env_cache_stats()] == {
        "venv|hits": 2, "venv|misses": 2, "venv|failures": 1, "build|venv|60": 1,
        "build|venv|sum": 42.0, "conda|misses": 1, "build|conda|300": 1, "build|conda|sum": 200.0,
    }  # fmt: skip
    got: dict[tuple[str, Any], float] = {
        (s.name, s.labels.get("executor"), s.labels.get("le")): s.value  # type: ignore[misc]
        for family in envstats.families(pipe.raw(keys.env_cache_stats()))
        for s in family.samples
    }
    assert got[("celery_agent_env_cache_hits_total", "venv", None)] == 2
    assert got[("celery_agent_env_cache_misses_total", "venv", None)] == 2
    assert got[("celery_agent_env_build_failures_total", "venv", None)] == 1
    assert ("celery_agent_env_cache_hits_total", "conda", None) not in got
    assert got[("celery_agent_env_build_seconds_count", "conda", None)] == 1
    assert got[("celery_agent_env_build_seconds_bucket", "venv", "30.0")] == 0
    assert got[("celery_agent_env_build_seconds_bucket", "venv", "60.0")] == 1
