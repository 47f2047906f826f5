"""One thread per worker process for the runs it holds: it hears cancels on the abort channel,
renews the runs' claims and sends their deferred record writes.

A run used to start two threads of its own (claim renewal, abort-channel listener) and open a Redis
connection for its subscription, and wrote each agent log line and record field as it came: ~10
round trips and ~1 ms of thread starts before a trivial script ran. Now the process keeps one
subscriber connection and one thread for all its runs (a pool process runs one at a time; a
threads pool several), and a run's notes and fields wait in its :class:`Held` until the next write
that must go out now (a state change) or, at the latest, :data:`FLUSH_AFTER` seconds, so a long
environment build still shows its lines as they come.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from .errors import StateError
from .state import RunStore

logger = logging.getLogger(__name__)

FLUSH_AFTER = 0.05  #: seconds a deferred note or field may wait before the keeper sends it
_IDLE_WAIT = 0.25  #: the listener's wait when no run is held
#: claim renewals per claim TTL: a runner stalled (paused, cut off from Redis) for less than
#: ``(1 - 1/RENEWALS) * claim_ttl`` keeps its claim, so its run is never given to another worker
RENEWALS = 6


class Held:
    """A run this process holds: its claim, whether a cancel was heard, its deferred writes."""

    def __init__(self, store: RunStore, run_id: str, token: str, ttl: float) -> None:
        self.store, self.run_id, self.token, self.ttl = store, run_id, token, ttl
        self.cancel_heard = False
        #: the holder of the run's claim now, when it expired and another runner took it: this
        #: attempt must stop and write nothing more (the run is that runner's now)
        self.lost_to: str | None = None
        self.renew_at = time.monotonic() + ttl / RENEWALS
        self._lock = threading.Lock()
        self._fields: dict[str, Any] = {}
        self._state: tuple[str, dict[str, Any]] | None = None
        self._lines: list[str] = []
        self._ops: list[Callable[[Any], object]] = []
        self._since: float | None = None
        #: names this attempt's lines in the log's sent counts (:meth:`RunStore.append_log`): a
        #: write sent again after a lost reply does not append its lines twice
        self._writer = uuid.uuid4().hex
        self._sent = {"notes": 0, "out": 0}

    def defer(self, lines: list[str] | None = None, **fields: Any) -> None:
        """Queue log lines and record fields; they go out with the next write, or soon."""
        with self._lock:
            self._lines.extend(lines or ())
            self._fields.update(fields)
            if self._since is None:
                self._since = time.monotonic()

    def defer_write(self, write: Callable[[Any], object]) -> None:
        """Queue ``write(pipe)`` (commands on the pipeline, e.g. counters); it goes out with the
        next write, or soon, after the run's own writes."""
        with self._lock:
            self._ops.append(write)
            if self._since is None:
                self._since = time.monotonic()

    def defer_state(self, state: str, **fields: Any) -> None:
        """Queue a state change (unless the run ended, as :meth:`RunStore.transition`); it goes
        out before the lines queued with it, so the run's own lines follow it in the log. Two
        queued changes go out as the later one with the fields (and times) of both."""
        with self._lock:
            earlier = self._state[1] if self._state is not None else {}
            self._state = (state, earlier | {f"{state}_at": time.time()} | fields)
            if self._since is None:
                self._since = time.monotonic()

    def write(
        self, build: Callable[[Any], object] | None = None, *, end: dict[str, Any] | None = None
    ) -> list[Any]:
        """Send the deferred writes, then what ``build(pipe)`` adds, in one round trip; returns
        the results of ``build``'s commands. Writes of one run never overtake each other.

        ``end`` is given with the run's last write: the fields of its final state, which
        ``build`` writes. The deferred fields and state change are folded into it (one forced
        transition instead of three writes); ``end``'s own values win."""
        with self._lock:
            pipe = self.store.r.pipeline(transaction=False)
            if self.lost_to is None:
                self._queue(pipe, end)
            deferred = len(pipe)
            if build is not None:
                build(pipe)
            if not len(pipe):
                return []
            try:
                results: list[Any] = pipe.execute()
            except (redis.ConnectionError, redis.TimeoutError) as err:
                raise StateError(f"Redis is unreachable: {err}") from err
            self._sent["notes"] += len(self._lines) if self.lost_to is None else 0
            self._fields, self._state, self._lines, self._since = {}, None, [], None
            self._ops = []
            return results[deferred:]

    def send(self, lines: list[str]) -> None:
        """Send the run's own output lines now, after the deferred writes, each line once though
        a batch is sent again (the log pump keeps a batch whose write raised and retries it)."""
        first = self._sent["out"]
        self.write(lambda pipe: self._append(pipe, "out", lines, first))
        self._sent["out"] = first + len(lines)

    def _append(self, pipe: Any, stream: str, lines: list[str], first: int) -> None:
        writer = f"{self._writer}.{stream}"
        self.store.append_log(self.run_id, lines, pipe=pipe, writer=writer, first=first)

    def due(self, now: float) -> bool:
        """Whether deferred writes have waited long enough."""
        return self._since is not None and now - self._since >= FLUSH_AFTER

    def _queue(self, pipe: Any, end: dict[str, Any] | None) -> None:
        if end is not None:
            folded = self._fields | (self._state[1] if self._state is not None else {})
            for key, value in folded.items():
                end.setdefault(key, value)
        elif self._fields:
            self.store.update(self.run_id, pipe=pipe, **self._fields)
        if self._state is not None and end is None:
            self.store.transition(self.run_id, self._state[0], pipe=pipe, **self._state[1])
        if self._lines:
            self._append(pipe, "notes", self._lines, self._sent["notes"])
        for write in self._ops:
            write(pipe)


class Keeper:
    """The thread of one process that serves every :class:`Held` run (see the module docstring)."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self._runs: dict[str, Held] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def hold(self, run_id: str, token: str, ttl: float) -> Held:
        """Start serving a run this process claimed."""
        held = Held(self.store, run_id, token, ttl)
        with self._lock:
            self._runs[run_id] = held
            self._ensure_thread()
        return held

    def drop(self, held: Held) -> None:
        """Stop serving a run (its claim is no longer renewed)."""
        with self._lock:
            if self._runs.get(held.run_id) is held:
                del self._runs[held.run_id]

    def _ensure_thread(self) -> None:
        if self._pid != os.getpid():  # a forked child inherits no threads
            self._pid, self._thread = os.getpid(), None
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="run-keeper", daemon=True)
            self._thread.start()

    # -- the thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                self._listen()
            except Exception as err:  # Redis away: flags are still polled; try again soon
                logger.debug("run keeper: %s", err)
                self._serve(time.monotonic())
                time.sleep(1.0)

    def _listen(self) -> None:
        pubsub: Any = self.store.r.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.store.keys.abort_channel())
            while True:
                with self._lock:
                    wait = FLUSH_AFTER if self._runs else _IDLE_WAIT
                message = pubsub.get_message(timeout=wait)
                if message is not None:
                    self._heard(str(message.get("data")))
                self._serve(time.monotonic())
        finally:
            pubsub.close()

    def _heard(self, run_id: str) -> None:
        with self._lock:
            held = self._runs.get(run_id)
        if held is not None:
            held.cancel_heard = True

    def _serve(self, now: float) -> None:
        with self._lock:
            runs = list(self._runs.values())
        for held in runs:
            try:
                if held.due(now):
                    held.write()
                if now >= held.renew_at:
                    held.renew_at = now + held.ttl / RENEWALS
                    self._renew(held)
            except (redis.RedisError, StateError) as err:
                logger.warning("run %s: %s", held.run_id, err)

    def _renew(self, held: Held) -> None:
        """Renew the claim; when it expired (this process stalled, or Redis lost it), claim it
        again unless another runner has it by now: then this attempt must stop."""
        if held.lost_to is not None or self.store.renew_claim(held.run_id, held.token, held.ttl):
            return
        holder = self.store.claim(held.run_id, held.token, held.ttl)
        if holder is None:
            logger.warning("claim on run %s had expired; claimed it again", held.run_id)
        else:
            held.lost_to = holder
            logger.warning("run %s: its claim expired and %s runs it now; stopping this attempt",
                           held.run_id, holder)  # fmt: skip


_keepers: dict[tuple[int, int], Keeper] = {}


def keeper_for(store: RunStore) -> Keeper:
    """The keeper of ``store`` in this process."""
    key = (os.getpid(), id(store))
    if key not in _keepers:
        _keepers[key] = Keeper(store)
    return _keepers[key]
