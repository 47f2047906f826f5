"""The env cache under use: leased entries are never evicted, aliases, sizes with hard links."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

from celery_agent.entryfiles import tree_sizes
from celery_agent.envcache import EnvCache, usage_under
from celery_agent.envusers import EnvUsers


def build(size: int = 10) -> Any:
    def builder(env: Path) -> dict[str, Any]:
        env.mkdir(parents=True)
        (env / "payload").write_bytes(b"x" * size)
        return {"freeze": ["six==1.16.0"]}

    return builder


def age(cache: EnvCache, key: str, seconds_ago: float) -> None:
    stamp = time.time() - seconds_ago
    os.utime(cache.root / key / "last_used", (stamp, stamp))


def test_an_entry_in_use_is_passed_by_and_the_next_oldest_evicted(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path, max_entries=2)
    held = cache.get_or_build("a", build(), hold=True)
    cache.get_or_build("b", build())
    age(cache, "a", 30)
    age(cache, "b", 20)
    cache.get_or_build("c", build())
    assert sorted(row["key"] for row in cache.entries()) == ["a", "c"]
    assert held.lease is not None
    held.lease.release()
    cache.max_entries = 1
    assert cache.evict(keep={"c"}) == ["a"], "once released, it goes like any other"


def test_all_entries_in_use_leave_the_cache_over_its_limit_not_broken(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path, max_entries=10)
    leases: list[Any] = []  # (a thread holds one lease at a time: one thread per run)
    for key in "ab":
        thread = threading.Thread(
            target=lambda k=key: leases.append(cache.get_or_build(k, build(), hold=True).lease)
        )
        thread.start()
        thread.join()
    cache.max_entries = 0
    assert cache.evict() == []
    assert cache.lookup("a") is not None and cache.lookup("b") is not None
    for lease in leases:
        assert lease is not None
        lease.release()


def _hold_and_exit(root: str, key: str) -> None:
    EnvUsers(Path(root)).hold(key)
    os._exit(0)  # no release: as a process that crashed


def test_a_lease_of_a_dead_process_does_not_pin_the_entry(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path, max_entries=10)
    cache.get_or_build("a", build())
    child = multiprocessing.get_context("fork").Process(
        target=_hold_and_exit, args=(str(tmp_path), "a")
    )
    child.start()
    child.join(10)
    assert list((tmp_path / ".users" / "a").iterdir()), "the dead process left its lease"
    cache.max_entries = 0
    assert cache.evict() == ["a"]


def test_a_threads_next_lease_gives_back_its_last_one(tmp_path: Path) -> None:
    users = EnvUsers(tmp_path)
    users.hold("a")
    users.hold("b")
    assert users.holders("a") == [] and users.holders("b") == [os.getpid()]
    other: list[int] = []
    thread = threading.Thread(target=lambda: other.extend([users.hold("a") and 1]))
    thread.start()
    thread.join()
    assert users.holders("a") == [os.getpid()] and users.in_use("b"), "threads hold their own"


def test_a_lease_taken_while_eviction_looks_keeps_the_entry(tmp_path: Path, monkeypatch) -> None:
    cache = EnvCache(tmp_path, max_entries=10)
    cache.get_or_build("a", build())
    looks: list[bool] = []
    real = cache.users.in_use

    def in_use(key: str) -> bool:  # a run leases the entry right after eviction's first look
        if not looks:
            looks.append(real(key))
            cache.users.hold(key)
            return looks[0]
        return real(key)

    monkeypatch.setattr(cache.users, "in_use", in_use)
    cache.max_entries = 0
    assert cache.evict() == []
    assert cache.lookup("a") is not None, "its ready marker is back"


def test_an_alias_key_gets_the_entry_it_names(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path)
    first = cache.get_or_build("orig", build())
    cache.alias("frozen", "orig")
    again = cache.get_or_build("frozen", build(), hold=True)
    assert again.hit and again.key == "orig" and again.path == first.path
    assert again.lease is not None and cache.users.holders("orig") == [os.getpid()]
    again.lease.release()


def test_an_alias_of_a_removed_entry_builds_anew_and_is_swept(tmp_path: Path) -> None:
    cache = EnvCache(tmp_path)
    cache.get_or_build("orig", build())
    cache.alias("frozen", "orig")
    cache.remove("orig")
    rebuilt = cache.get_or_build("frozen", build())
    assert not rebuilt.hit and rebuilt.key == "frozen"
    cache.evict()
    assert not (tmp_path / "frozen.alias").exists()


def test_sizes_count_a_hard_linked_file_once_and_say_it_is_shared(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "own").write_bytes(b"x" * 1000)
    (tmp_path / "store").write_bytes(b"y" * 5000)
    os.link(tmp_path / "store", tree / "linked")
    os.link(tmp_path / "store", tree / "linked-again")
    assert tree_sizes(tree) == (6000, 5000)


def test_usage_sums_the_executors_caches(tmp_path: Path) -> None:
    venvs, condas = EnvCache(tmp_path / "venv"), EnvCache(tmp_path / "conda")
    venvs.get_or_build("a", build(3000))
    lease = condas.get_or_build("b", build(2000), hold=True).lease
    usage = usage_under(tmp_path, max_entries=20, max_bytes=2**30)
    assert usage["entries"] == 2 and usage["in_use"] == 1
    assert usage["bytes"] >= 5000 and usage["max_bytes"] == 2**30
    assert lease is not None
    lease.release()


def test_env_cache_max_gb_bounds_the_cache_and_the_former_name_still_works() -> None:
    from celery_agent.settings import Settings

    new = Settings.load(environ={"CELERY_AGENT_ENV_CACHE_MAX_GB": "2"}, config_file=None)
    old = Settings.load(environ={"CELERY_AGENT_MAX_ENV_GB": "1.5"}, config_file=None)
    both = Settings.load(
        environ={"CELERY_AGENT_ENV_CACHE_MAX_GB": "2", "CELERY_AGENT_MAX_ENV_GB": "9"},
        config_file=None,
    )
    assert new.env_cache_bytes == 2 * 2**30 and old.env_cache_bytes == int(1.5 * 2**30)
    assert both.env_cache_bytes == 2 * 2**30, "the new name wins"
    assert Settings.load(environ={}, config_file=None).env_cache_bytes is None
