"""Dynamic GPU leases: a run of a ``--dynamic`` worker takes free GPUs atomically in Redis.

A lease is the key ``{p}:gpu:{host}:{uuid}`` holding ``{worker}/{run id}`` with a TTL, renewed from a
thread while the run lives (like a run's claim) and deleted when it ends; a crashed worker's leases
expire. One Lua script checks and takes all the GPUs a run needs at once, so no GPU is ever given to
two runs. GPUs that NVML shows in use by a process no lease covers are not offered at all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis

from .errors import Cancelled, StageTimeout
from .keys import Keys
from .monitoring.gpu import GpuDevice, process_memory

logger = logging.getLogger(__name__)

# Take the first ARGV[1] free keys of KEYS (all or nothing); returns their 1-based positions.
_ACQUIRE = """
local want, free = tonumber(ARGV[1]), {}
for i, key in ipairs(KEYS) do
  if #free == want then break end
  if redis.call('EXISTS', key) == 0 then free[#free + 1] = i end
end
if #free < want then return {} end
for _, i in ipairs(free) do redis.call('SET', KEYS[i], ARGV[2], 'PX', ARGV[3]) end
return free
"""
# Renew (ARGV[2] = ttl ms) or, with ARGV[2] = '0', delete the keys still held by ARGV[1].
_RENEW_OR_RELEASE = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    if ARGV[2] == '0' then redis.call('DEL', key) else redis.call('PEXPIRE', key, ARGV[2]) end
    n = n + 1
  end
end
return n
"""


class GpuLeases:
    """Leases on the GPUs of one machine (``host``) in one Redis."""

    def __init__(self, client: redis.Redis, keys: Keys, host: str) -> None:
        self.r: Any = client
        self.keys, self.host = keys, host
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW_OR_RELEASE)

    def _keys(self, uuids: Sequence[str]) -> list[str]:
        return [self.keys.gpu_lease(self.host, u) for u in uuids]

    def acquire(self, uuids: Sequence[str], count: int, owner: str, ttl: float) -> list[str]:
        """Lease ``count`` of ``uuids`` (first free first) for ``owner``; [] when too few are free."""
        if count <= 0:
            return []
        got = self._acquire(keys=self._keys(uuids), args=[count, owner, int(ttl * 1000)])
        return [uuids[int(i) - 1] for i in got]

    def renew(self, uuids: Sequence[str], owner: str, ttl: float) -> int:
        """Extend the leases ``owner`` still holds; returns how many it holds."""
        return int(self._renew(keys=self._keys(uuids), args=[owner, max(1, int(ttl * 1000))]))

    def release(self, uuids: Sequence[str], owner: str) -> int:
        """Drop the leases ``owner`` holds; returns how many were dropped."""
        return int(self._renew(keys=self._keys(uuids), args=[owner, "0"])) if uuids else 0

    def holders(self, uuids: Sequence[str]) -> dict[str, str | None]:
        """uuid -> the lease's owner (None when free)."""
        values = self.r.mget(self._keys(uuids)) if uuids else []
        return dict(zip(uuids, values, strict=True))


def busy_outside(uuids: Sequence[str]) -> set[str]:
    """GPUs among ``uuids`` that NVML shows running a process (unleased, so someone else's)."""
    procs = process_memory()
    return {u for u in uuids if procs.get(u)}


def lease_gpus(
    leases: GpuLeases,
    owned: Sequence[GpuDevice],
    count: int,
    owner: str,
    *,
    ttl: float,
    wait: float,
    busy: Callable[[Sequence[str]], set[str]] = busy_outside,
    should_abort: Callable[[], bool] = lambda: False,
    poll: float = 0.5,
) -> list[GpuDevice]:
    """Lease ``count`` of ``owned`` for ``owner``, waiting up to ``wait`` s for enough to be free.

    Raises StageTimeout when they do not free up in time and Cancelled when the run is cancelled.
    """
    by_uuid = {d.uuid: d for d in owned}
    deadline = time.monotonic() + wait
    while True:
        free = _unleased(leases, list(by_uuid))
        taken = busy(free) if len(free) >= count else set(free)
        candidates = [u for u in free if u not in taken]
        got = leases.acquire(candidates, count, owner, ttl) if len(candidates) >= count else []
        if got:
            return [by_uuid[u] for u in got]
        if should_abort():
            raise Cancelled("cancelled while waiting for GPUs")
        if time.monotonic() >= deadline:
            raise StageTimeout(_no_gpus(count, len(owned), len(free), wait))
        time.sleep(poll)


def _unleased(leases: GpuLeases, uuids: list[str]) -> list[str]:
    return [u for u, holder in leases.holders(uuids).items() if holder is None]


def _no_gpus(count: int, owned: int, free: int, wait: float) -> str:
    return (
        f"gpu stage timed out: the run needs {count} GPUs; this worker owns {owned}, "
        f"{free} unleased, none enough free after waiting {wait:g}s (raise gpu_wait to wait longer)"
    )


class LeaseKeeper:
    """Renews a run's GPU leases from a daemon thread while the run lives; releases them at exit."""

    def __init__(self, leases: GpuLeases, uuids: Sequence[str], owner: str, ttl: float) -> None:
        self.leases, self.uuids, self.owner, self.ttl = leases, list(uuids), owner, ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gpu-leases", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        if self.uuids:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            self.leases.release(self.uuids, self.owner)
        except redis.RedisError as err:
            logger.warning("could not release GPU leases of %s: %s", self.owner, err)

    def _loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                held = self.leases.renew(self.uuids, self.owner, self.ttl)
                if held < len(self.uuids):
                    logger.error("%s lost %d GPU lease(s)", self.owner, len(self.uuids) - held)
            except redis.RedisError as err:
                logger.warning("could not renew GPU leases of %s: %s", self.owner, err)


@contextmanager
def held(
    leases: GpuLeases | None,
    owned: Sequence[GpuDevice],
    want: Sequence[GpuDevice] | int,
    owner: str,
    *,
    ttl: float,
    wait: float,
    should_abort: Callable[[], bool] = lambda: False,
) -> Iterator[list[GpuDevice]]:
    """The GPUs a run uses while inside: ``want`` itself when it is a list, else leased ones."""
    if isinstance(want, int) and want > 0 and leases is not None:
        gpus = lease_gpus(leases, owned, want, owner, ttl=ttl, wait=wait, should_abort=should_abort)
        with LeaseKeeper(leases, [g.uuid for g in gpus], owner, ttl):
            yield gpus
    else:
        yield list(want) if not isinstance(want, int) else []
