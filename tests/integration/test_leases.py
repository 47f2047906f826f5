"""Dynamic GPU leases against a real Redis: atomic, never shared, renewed, released, expiring."""

from __future__ import annotations

import random
import threading
import time
import uuid

import pytest

from celery_agent.errors import Cancelled, StageTimeout
from celery_agent.gpus import fake_uuid
from celery_agent.leases import GpuLeases, LeaseKeeper, held, lease_gpus
from celery_agent.monitoring.gpu import GpuDevice
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration
EIGHT = [GpuDevice(i, fake_uuid(i)) for i in range(8)]
UUIDS = [d.uuid for d in EIGHT]


@pytest.fixture()
def leases(store):
    return GpuLeases(store.r, store.keys, f"host-{uuid.uuid4().hex[:6]}")


def test_acquire_is_all_or_nothing(leases):
    assert leases.acquire(UUIDS[:2], 1, "a", 10) == [UUIDS[0]]
    assert leases.acquire(UUIDS[:2], 2, "b", 10) == [], "only one is free"
    assert leases.holders(UUIDS[:2]) == {UUIDS[0]: "a", UUIDS[1]: None}


def test_only_the_owner_renews_or_releases(leases):
    leases.acquire(UUIDS, 2, "a", 10)
    assert leases.release(UUIDS[:2], "b") == 0 and leases.renew(UUIDS[:2], "b", 10) == 0
    assert leases.renew(UUIDS[:2], "a", 10) == 2 and leases.release(UUIDS[:2], "a") == 2
    assert set(leases.holders(UUIDS[:2]).values()) == {None}


def test_a_crashed_owners_lease_expires(leases):
    assert leases.acquire(UUIDS[:1], 1, "dead", 1.0) == UUIDS[:1]
    assert leases.acquire(UUIDS[:1], 1, "next", 10) == [], "held until it expires"
    wait_for(
        "the lease to expire",
        lambda: leases.acquire(UUIDS[:1], 1, "next", 10) == UUIDS[:1],
        10,
        every=0.02,
    )
    assert leases.holders(UUIDS[:1]) == {UUIDS[0]: "next"}


def test_hammer_concurrent_leases_never_share_a_gpu(leases):
    in_use: dict[str, str] = {}
    guard, clashes, grants = threading.Lock(), [], []

    def hammer(me: str) -> None:
        for _ in range(40):
            got = leases.acquire(UUIDS, random.randint(1, 3), me, 10)
            with guard:
                clashes.extend(u for u in got if u in in_use)
                in_use.update(dict.fromkeys(got, me))
                grants.append(len(got))
            time.sleep(random.random() / 1000)
            with guard:
                for u in got:
                    del in_use[u]
            leases.release(got, me)

    threads = [threading.Thread(target=hammer, args=(f"run{i}",)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clashes == [] and sum(1 for g in grants if g) > 100
    assert set(leases.holders(UUIDS).values()) == {None}, "every lease was released"


def test_busy_gpus_are_not_leased(leases):
    got = lease_gpus(leases, EIGHT[:3], 2, "r", ttl=10, wait=0, busy=lambda u: {UUIDS[0]})
    assert [d.index for d in got] == [1, 2]


def test_a_run_waits_for_gpus_then_gets_them(leases):
    leases.acquire(UUIDS[:1], 1, "other", 10)
    threading.Timer(0.3, leases.release, (UUIDS[:1], "other")).start()
    start = time.monotonic()
    got = lease_gpus(leases, EIGHT[:1], 1, "r", ttl=10, wait=5, busy=lambda u: set(), poll=0.05)
    assert got == EIGHT[:1] and 0.25 < time.monotonic() - start < 3


def test_a_run_that_waits_too_long_fails_and_oversubscribes_nothing(leases):
    leases.acquire(UUIDS[:2], 2, "other", 10)
    with pytest.raises(StageTimeout, match="needs 1 GPUs"):
        lease_gpus(leases, EIGHT[:2], 1, "r", ttl=10, wait=0.2, busy=lambda u: set(), poll=0.05)
    with pytest.raises(Cancelled):
        lease_gpus(
            leases,
            EIGHT[:2],
            1,
            "r",
            ttl=10,
            wait=5,
            busy=lambda u: set(),
            should_abort=lambda: True,
        )
    assert set(leases.holders(UUIDS[:2]).values()) == {"other"}


def test_keeper_renews_while_held_and_releases_after(leases):
    with held(leases, EIGHT[:2], 1, "r", ttl=0.3, wait=0) as gpus:
        assert len(gpus) == 1
        key = leases.keys.gpu_lease(leases.host, gpus[0].uuid)
        end, renewals, left = time.monotonic() + 0.6, 0, leases.r.pttl(key)
        while time.monotonic() < end:  # twice the TTL, held at every look: renewed, not luck
            assert leases.holders([gpus[0].uuid])[gpus[0].uuid] == "r"
            now_left = leases.r.pttl(key)
            renewals += now_left > left
            left = now_left
            time.sleep(0.02)
        assert renewals >= 1
    assert leases.holders([gpus[0].uuid])[gpus[0].uuid] is None


def test_keeper_with_nothing_to_keep_starts_no_thread(leases):
    with LeaseKeeper(leases, [], "r", 1) as keeper:
        assert not keeper._thread.is_alive()
