"""The env cache: keys, hits in place, partial rebuilds, failure cache, eviction, one build per key."""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

from celery_agent.envcache import CachedEnv, EnvCache
from celery_agent.errors import EnvBuildError
from celery_agent.testing import wait_for


class Builder:
    """A build function that records its calls and writes ``size`` bytes into the env."""

    def __init__(self, size: int = 10, fail: Exception | None = None) -> None:
        self.calls: list[Path] = []
        self.size = size
        self.fail = fail

    def __call__(self, env: Path) -> dict[str, Any]:
        self.calls.append(env)
        env.mkdir(parents=True)
        (env / "payload").write_bytes(b"x" * self.size)
        if self.fail is not None:
            raise self.fail
        return {"built": len(self.calls)}


def _age(cache: EnvCache, key: str, seconds_ago: float) -> None:
    stamp = time.time() - seconds_ago
    os.utime(cache.root / key / "last_used", (stamp, stamp))


# -- keys -----------------------------------------------------------------------------------------
def test_key_is_stable_across_dict_order_and_24_hex_chars() -> None:
    a = EnvCache.key({"python": "/usr/bin/python3", "requirements": ["six"]})
    b = EnvCache.key({"requirements": ["six"], "python": "/usr/bin/python3"})
    assert a == b
    assert len(a) == 24 and int(a, 16) >= 0


def test_key_changes_when_any_part_changes() -> None:
    base = {"python": "/usr/bin/python3", "requirements": ["six"]}
    assert EnvCache.key(base) != EnvCache.key(base | {"requirements": ["six==1.16.0"]})
    assert EnvCache.key(base) != EnvCache.key(base | {"python": "/usr/bin/python3.12"})


def test_invalid_key_is_rejected_before_touching_the_disk(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path)
    with pytest.raises(ValueError, match="not valid"):
        cache.lookup("../escape")


# -- hits and misses ------------------------------------------------------------------------------
def test_miss_builds_at_the_final_path_then_hit_reuses_it_in_place(tmp_path: Path) -> None:
    cache, build = EnvCache(tmp_path), Builder()
    first = cache.get_or_build("k1", build, label="demo")
    second = cache.get_or_build("k1", build)
    assert build.calls == [tmp_path / "k1" / "env"]
    assert (first.hit, second.hit) == (False, True)
    assert first.path == second.path == tmp_path / "k1" / "env"
    assert second.meta == first.meta == {"built": 1}
    assert json.loads((tmp_path / "k1" / "meta.json").read_text()) == {"built": 1}


def test_hit_touches_last_used(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path)
    cache.get_or_build("k1", Builder())
    _age(cache, "k1", 1000)
    cache.get_or_build("k1", Builder())
    assert time.time() - (tmp_path / "k1" / "last_used").stat().st_mtime < 60


def test_hit_takes_well_under_five_milliseconds(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path)
    cache.get_or_build("k1", Builder())
    times = [cache.get_or_build("k1", Builder()).seconds for _ in range(200)]
    assert statistics.median(times) < 0.005


def test_lookup_returns_none_without_a_ready_marker(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path)
    assert cache.lookup("k1") is None
    cache.get_or_build("k1", Builder())
    found = cache.lookup("k1")
    assert isinstance(found, CachedEnv) and found.hit and found.meta == {"built": 1}
    (tmp_path / "k1" / "ready").unlink()
    assert cache.lookup("k1") is None


def test_partial_build_without_ready_marker_is_rebuilt(tmp_path: Path) -> None:
    leftover = tmp_path / "k1" / "env"
    leftover.mkdir(parents=True)
    (leftover / "half-written").write_text("crash")
    build = Builder()
    result = EnvCache(tmp_path).get_or_build("k1", build)
    assert not result.hit and len(build.calls) == 1
    assert not (leftover / "half-written").exists()
    assert (leftover / "payload").exists()


def test_build_crash_leaves_no_entry_and_is_not_cached(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path)
    with pytest.raises(RuntimeError):
        cache.get_or_build("k1", Builder(fail=RuntimeError("boom")))
    assert not (tmp_path / "k1").exists()
    assert not (tmp_path / "k1.failed").exists()
    assert not cache.get_or_build("k1", Builder()).hit


# -- failure cache --------------------------------------------------------------------------------
def test_build_failure_is_cached_and_reraised_without_rebuilding(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path, failure_ttl=60)
    error = EnvBuildError("pip install failed (exit 1): no such package", "check the names")
    with pytest.raises(EnvBuildError):
        cache.get_or_build("k1", Builder(fail=error))
    assert not (tmp_path / "k1").exists()
    again = Builder()
    with pytest.raises(EnvBuildError) as caught:
        cache.get_or_build("k1", again)
    assert again.calls == []
    assert caught.value.message.startswith("cached failure from 0s ago: pip install failed")
    assert "clear the cache entry k1" in (caught.value.hint or "")


def test_cached_failure_expires_after_the_ttl(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path, failure_ttl=0.2)
    with pytest.raises(EnvBuildError):
        cache.get_or_build("k1", Builder(fail=EnvBuildError("bad")))
    retry = Builder()

    def rebuilt() -> bool:
        try:
            entry = cache.get_or_build("k1", retry)
        except EnvBuildError as err:  # still the cached failure, until its TTL runs out
            assert err.message.startswith("cached failure")
            return False
        assert not entry.hit
        return True

    wait_for("the cached failure to expire", rebuilt, 10, every=0.02)
    assert len(retry.calls) == 1


def test_zero_failure_ttl_caches_no_failure(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path, failure_ttl=0)
    with pytest.raises(EnvBuildError):
        cache.get_or_build("k1", Builder(fail=EnvBuildError("bad")))
    assert cache.get_or_build("k1", Builder()).meta == {"built": 1}


def test_remove_clears_a_cached_failure(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path)
    with pytest.raises(EnvBuildError):
        cache.get_or_build("k1", Builder(fail=EnvBuildError("bad")))
    assert cache.remove("k1")
    assert not cache.get_or_build("k1", Builder()).hit


# -- listing and eviction -------------------------------------------------------------------------
def test_entries_list_key_path_bytes_and_label(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path)
    cache.get_or_build("k1", Builder(size=5000), label="python 3.11: six")
    [row] = cache.entries()
    assert row["key"] == "k1" and row["path"] == tmp_path / "k1" / "env"
    assert row["bytes"] >= 5000 and row["label"] == "python 3.11: six"
    assert row["last_used"] > 0


def test_building_past_max_entries_evicts_the_least_recently_used(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path, max_entries=2)
    cache.get_or_build("a", Builder())
    cache.get_or_build("b", Builder())
    _age(cache, "a", 30)
    _age(cache, "b", 20)
    cache.get_or_build("a", Builder())  # a hit makes a the most recent
    cache.get_or_build("c", Builder())
    assert sorted(row["key"] for row in cache.entries()) == ["a", "c"]
    assert cache.lookup("b") is None


def test_max_bytes_evicts_oldest_until_under_the_limit(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path, max_bytes=25_000)
    for i, key in enumerate(["a", "b", "c"]):
        cache.get_or_build(key, Builder(size=10_000))
        _age(cache, key, 100 - i)
    assert [row["key"] for row in cache.entries()] == ["b", "c"]


def test_evict_never_removes_kept_keys_and_returns_evicted_oldest_first(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path, max_entries=10)
    for age, key in [(30, "a"), (20, "b"), (10, "c")]:
        cache.get_or_build(key, Builder())
        _age(cache, key, age)
    cache.max_entries = 0
    assert cache.evict(keep={"b"}) == ["a", "c"]
    assert [row["key"] for row in cache.entries()] == ["b"]


def test_evict_skips_an_entry_whose_lock_a_builder_holds(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path, max_entries=10)
    cache.get_or_build("a", Builder())
    cache.max_entries = 0
    with FileLock(tmp_path / "a.lock", timeout=1):
        assert cache.evict() == []
    assert cache.lookup("a") is not None
    assert cache.evict() == ["a"]


def test_evict_sweeps_unlocked_partial_builds(tmp_path: Path) -> None:
    (tmp_path / "crashed" / "env").mkdir(parents=True)
    EnvCache(tmp_path).evict()
    assert not (tmp_path / "crashed").exists()


# -- concurrency ----------------------------------------------------------------------------------
def _slow_counting_build(counter: Path) -> Any:
    def build(env: Path) -> dict[str, Any]:
        with counter.open("a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        env.mkdir(parents=True)
        return {"pid": os.getpid()}

    return build


def _build_in_child(root: str, counter: str, out: Any) -> None:
    result = EnvCache(Path(root)).get_or_build("shared", _slow_counting_build(Path(counter)))
    out.put((result.hit, str(result.path)))


def test_two_processes_asking_for_a_missing_key_build_it_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    counter = tmp_path / "builds.txt"
    args = (str(tmp_path / "cache"), str(counter), out)
    procs = [ctx.Process(target=_build_in_child, args=args) for _ in range(2)]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=30) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    assert len(counter.read_text().splitlines()) == 1
    assert sorted(hit for hit, _ in results) == [False, True]
    assert len({path for _, path in results}) == 1


def test_two_threads_asking_for_a_missing_key_build_it_once(tmp_path: Path) -> None:
    cache, counter = EnvCache(tmp_path / "cache"), tmp_path / "builds.txt"
    results: list[CachedEnv] = []

    def ask() -> None:
        results.append(cache.get_or_build("shared", _slow_counting_build(counter)))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(counter.read_text().splitlines()) == 1
    assert sorted(r.hit for r in results) == [False, True]


def test_a_stop_ends_the_wait_for_another_build_of_the_same_entry(tmp_path: Path) -> None:
    from celery_agent.errors import Cancelled

    asked = time.monotonic() + 0.3
    cache = EnvCache(tmp_path, stop=lambda: time.monotonic() >= asked)
    builder = Builder()
    held = FileLock(tmp_path / "k.lock", timeout=1)
    with held, pytest.raises(Cancelled, match="another build of its environment"):
        cache.get_or_build("k", builder)
    assert time.monotonic() - asked < 1.0 and builder.calls == []
    assert cache.get_or_build("k", builder).meta == {"built": 1}, "the lock was let go"


# -- outcomes told to an observer (metrics) --------------------------------------------------------
def test_the_observer_is_told_each_hit_build_and_failed_build_but_no_cached_failure(
    tmp_path: Path,
) -> None:
    told: list[tuple[str, float]] = []
    cache = EnvCache(tmp_path, observe=lambda outcome, seconds: told.append((outcome, seconds)))
    cache.get_or_build("k1", Builder())
    cache.get_or_build("k1", Builder())
    with pytest.raises(EnvBuildError):
        cache.get_or_build("k2", Builder(fail=EnvBuildError("bad")))
    with pytest.raises(EnvBuildError):  # the cached failure: no build ran, nothing told
        cache.get_or_build("k2", Builder())
    assert [outcome for outcome, _ in told] == ["built", "hit", "failed"]
    assert all(seconds >= 0 for _, seconds in told)


def test_an_observer_that_raises_never_fails_the_lookup(tmp_path: Path) -> None:
    def broken(outcome: str, seconds: float) -> None:
        raise RuntimeError("Redis away")

    cache = EnvCache(tmp_path, observe=broken)
    assert not cache.get_or_build("k1", Builder()).hit
    assert cache.get_or_build("k1", Builder()).hit
