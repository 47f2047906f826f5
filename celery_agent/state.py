"""The run store: run records, logs, claims and cancel flags in Redis.

Key names live in :mod:`.keys` (the one place that knows them), its Lua scripts in
:mod:`.runscripts`. A log stream entry carries a chunk of lines (field ``l``); a claim is the
holder running the run (``worker|host|pid``, see :mod:`.attempts`), with a TTL renewed while it
runs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import redis

from . import runscripts
from .errors import StateError, UnknownRunError
from .keys import Keys

logger = logging.getLogger(__name__)

QUEUED, PREPARING, RUNNING = "queued", "preparing", "running"
SUCCEEDED, FAILED, ABORTED, TIMED_OUT, LOST = "succeeded", "failed", "aborted", "timed_out", "lost"
TERMINAL = frozenset({SUCCEEDED, FAILED, ABORTED, TIMED_OUT, LOST})
ACTIVE = frozenset({PREPARING, RUNNING})
#: the record fields a delivery reads as it claims a run (the spec and the rest are not needed)
START_FIELDS = ("state", "attempt", "lost_attempts", "preparing_at", "queue")
_JSON_FIELDS = (
    "spec", "params", "usage", "freeze", "timings", "log_tail", "gpus", "torch_index",
    "unused_params", "artifacts", "checkpoints", "resumed", "inputs", "tags",
)  # fmt: skip


class Rider(Protocol):
    """Commands that ride on one of the store's round trips (a run's create write, its claim):
    :meth:`queue` adds them to its pipeline, :meth:`reply` gets the reply of the last one (an
    exception object when that command failed)."""

    def queue(self, pipe: Any) -> None:
        """Add the commands to ``pipe``."""

    def reply(self, result: Any) -> None:
        """Take the reply of the last command queued."""


class RunStore:
    """Run records, logs, claims and abort flags in Redis."""

    def __init__(self, client: redis.Redis, prefix: str = "ca", log_maxlen: int = 100_000) -> None:
        self.r: Any = (
            client  # decode_responses=True: str in, str out (redis-py's types cannot say so)
        )
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.log_maxlen = log_maxlen
        self._transition = client.register_script(runscripts.TRANSITION)
        self._renew = client.register_script(runscripts.RENEW)
        self._release = client.register_script(runscripts.RELEASE)
        self._steal = client.register_script(runscripts.STEAL)
        self._requeue = client.register_script(runscripts.REQUEUE)
        self._create = client.register_script(runscripts.CREATE)

    @classmethod
    def from_url(cls, url: str, prefix: str = "ca", log_maxlen: int = 100_000) -> RunStore:
        """A store on a new connection pool to ``url`` (redis://, rediss:// or sentinel://)."""
        from .redisconn import connect

        client = connect(url, decode_responses=True, health_check_interval=30)
        return cls(client, prefix, log_maxlen)

    # -- keys -----------------------------------------------------------------------------------
    # -- records --------------------------------------------------------------------------------
    def create_run(
        self, run_id: str, spec: Mapping[str, Any], queue: str, ride: Rider | None = None,
        **fields: Any,
    ) -> bool:  # fmt: skip
        """Record a queued run; False (and nothing changed) when the id is already recorded.
        ``ride`` goes in the same round trip, after the record (whether or not it was new)."""
        now = time.time()
        record = {"state": QUEUED, "spec": spec, "queue": queue, "submitted_at": now, "attempt": 0}
        record["name"] = spec.get("name") or spec.get("entry", "")
        record["tags"] = tags = [str(t) for t in spec.get("tags") or []]
        flat = [x for kv in _encode(record | fields).items() for x in kv]
        keys = [self.keys.run(run_id), self.keys.runs(), self.keys.run_counts()]
        by = [("queue", queue), ("user", fields.get("user")), *(("tag", t) for t in tags)]
        keys += [self.keys.runs_by(f, str(v)) for f, v in by if v]
        if ride is None:
            with _errors(self):
                return bool(self._create(keys=keys, args=[now, run_id, *flat]))
        with _errors(self):  # (EVAL, not EVALSHA: never NOSCRIPT between the two)
            pipe = self.r.pipeline(transaction=False)
            pipe.eval(runscripts.CREATE, len(keys), *keys, now, run_id, *flat)
            ride.queue(pipe)
            replies = pipe.execute(raise_on_error=False)
        created = _raised(replies[0])
        ride.reply(replies[-1])
        return bool(created)

    def transition(
        self, run_id: str, state: str, *, force: bool = False, pipe: Any = None, **fields: Any
    ) -> str:
        """Set ``state`` (and ``<state>_at``) unless the run already ended; returns the old state.

        A run that ended keeps its terminal state (a late 'running' never overwrites 'aborted')
        unless ``force`` is given. With ``pipe`` the write is queued there (its result, the old
        state, comes from the pipeline) and "" is returned.
        """
        fields = {f"{state}_at": time.time()} | fields
        args = [state, "1", "1" if force else "0", json.dumps(_encode(fields), ensure_ascii=False)]
        keys = [self.keys.run(run_id), self.keys.run_counts(), self.keys.run_histograms()]
        if pipe is not None:  # EVAL, not EVALSHA: a pipeline with a script object first asks
            pipe.eval(runscripts.TRANSITION, len(keys), *keys, *args)  # Redis if it has it
            return ""
        with _errors(self):
            old = self._transition(keys=keys, args=args)
        return str(old or "")

    def update(self, run_id: str, *, pipe: Any = None, **fields: Any) -> None:
        """Set fields on the run record without changing its state (queued on ``pipe`` if given)."""
        if pipe is not None:
            pipe.hset(self.keys.run(run_id), mapping=_encode(fields))
            return
        with _errors(self):
            self.r.hset(self.keys.run(run_id), mapping=_encode(fields))

    def claim_view(
        self, run_id: str, token: str, ttl: float, worker: str, ride: Rider | None = None
    ) -> tuple[bool, str, bool, bool, dict[str, Any]]:
        """Try to claim the run and read what a delivery must know to start, in one round trip:
        (claimed, holder, cancelled, ``worker`` drains, the record's :data:`START_FIELDS` that are
        set - empty when the run is unknown). ``ride`` goes in the same round trip, last."""
        with _errors(self):  # (a pipeline, not a script: its keys may live on different shards)
            pipe = self.r.pipeline(transaction=False)
            pipe.set(self.keys.claim(run_id), token, nx=True, px=int(ttl * 1000))
            pipe.get(self.keys.claim(run_id))
            pipe.exists(self.keys.abort(run_id))
            pipe.exists(self.keys.worker_drain(worker))
            pipe.hmget(self.keys.run(run_id), START_FIELDS)
            if ride is not None:
                ride.queue(pipe)
            replies = pipe.execute(raise_on_error=ride is None)
        if ride is not None:
            ride.reply(replies[-1])
        got, holder, aborted, draining, values = (_raised(r) for r in replies[:5])
        raw = {k: v for k, v in zip(START_FIELDS, values, strict=True) if v is not None}
        record = _decode(run_id, raw) if raw.get("state") else {}
        return bool(got), str(holder or ""), bool(aborted), bool(draining), record

    def get(self, run_id: str) -> dict[str, Any]:
        """The run record, JSON fields decoded; raises UnknownRunError."""
        with _errors(self):
            raw = self.r.hgetall(self.keys.run(run_id))
        if not raw:
            raise UnknownRunError(
                f"no run {run_id!r} is recorded", "check the id with `celery-agent ls`"
            )
        return _decode(run_id, raw)

    def find(self, prefix: str) -> str:
        """The full id of the one run whose id starts with ``prefix``."""
        with _errors(self):
            if self.r.exists(self.keys.run(prefix)):
                return prefix
            matches = [
                m for m in self.r.zrevrange(self.keys.runs(), 0, 4999) if m.startswith(prefix)
            ]
        if len(matches) == 1:
            return str(matches[0])
        hint = (
            "give more characters of the id" if matches else "check the id with `celery-agent ls`"
        )
        raise UnknownRunError(f"{len(matches)} runs match {prefix!r}", hint)

    def list_runs(
        self, limit: int = 20, state: str | None = None, **match: str | None
    ) -> list[dict[str, Any]]:
        """The newest runs first, optionally only those in ``state`` and whose record fields
        equal ``match`` (``user="alice"``, ``project="vision"``; None matches any)."""
        wanted = {name: value for name, value in match.items() if value is not None}
        scan = max(limit * 5, 200) * (10 if wanted else 1)  # (a filter keeps fewer of them)
        with _errors(self):
            ids = self._newest(scan, wanted.get("user"))
            pipe = self.r.pipeline()
            for run_id in ids:
                pipe.hgetall(self.keys.run(run_id))
            rows = [_decode(i, raw) for i, raw in zip(ids, pipe.execute(), strict=True) if raw]
        if state:
            rows = [row for row in rows if row.get("state") == state]
        for name, value in wanted.items():
            rows = [row for row in rows if row.get(name) == value]
        return rows[:limit]

    def _newest(self, n: int, user: str | None) -> list[str]:
        """The ids of the newest ``n`` runs, newest first; with ``user`` also that user's newest
        ``n`` from its own index (the user's runs behind ``n`` of others' are found too)."""
        ids = self.r.zrevrange(self.keys.runs(), 0, n - 1, withscores=True)
        if user:
            ids += self.r.zrevrange(self.keys.runs_by("user", user), 0, n - 1, withscores=True)
            ids = sorted(dict(ids).items(), key=lambda kv: -kv[1])
        return [run_id for run_id, _ in ids]

    # -- logs -----------------------------------------------------------------------------------
    def append_log(
        self,
        run_id: str,
        lines: list[str],
        *,
        pipe: Any = None,
        writer: str | None = None,
        first: int = 0,
    ) -> None:
        """Append a chunk of lines as one stream entry (one round trip per chunk, not per line;
        none of its own with ``pipe``).

        A ``writer`` (unique to one attempt's stream of lines) that sends a chunk again after an
        error gives each chunk's ``first`` line number (how many lines it sent before): lines
        already in the log are not appended twice, though the reply of the first try was lost."""
        if not lines:
            return
        target, text = (self.r if pipe is None else pipe), "\n".join(lines)
        if writer is None:
            target.xadd(
                self.keys.log(run_id), {"l": text}, maxlen=self.log_maxlen, approximate=True
            )
            return
        keys = [self.keys.log(run_id), self.keys.log_sent(run_id)]
        # EVAL, not EVALSHA: a pipeline with a script object first asks Redis if it has it
        target.eval(
            runscripts.APPEND_LOG, 2, *keys, writer, first, self.log_maxlen, text, len(lines)
        )

    def read_log(
        self, run_id: str, after: str = "0-0", block: float | None = None
    ) -> tuple[str, list[str]]:
        """Lines after stream id ``after``; returns (last id, lines). ``block`` waits up to N s."""
        key = self.keys.log(run_id)
        with _errors(self):
            if block:
                got = self.r.xread({key: after}, count=1000, block=int(block * 1000))
                entries = got[0][1] if got else []
            else:
                entries = self.r.xrange(
                    key, min=f"({after}" if after != "0-0" else "-", count=10_000
                )
        lines = [line for _, data in entries for line in data.get("l", "").split("\n")]
        return (entries[-1][0] if entries else after), lines

    def follow_log(self, run_id: str, poll: float = 1.0) -> Iterator[str]:
        """Every line of the run's log, waiting for more until the run ends."""
        after = "0-0"
        while True:
            after, lines = self.read_log(run_id, after, block=poll)
            yield from lines
            if not lines and self.get(run_id).get("state") in TERMINAL:
                after, lines = self.read_log(run_id, after)
                yield from lines
                if not lines:
                    return

    # -- claims and aborts ----------------------------------------------------------------------
    def claim(self, run_id: str, worker: str, ttl: float) -> str | None:
        """Claim the run for ``worker``; returns None on success, else the current holder."""
        key = self.keys.claim(run_id)
        with _errors(self):
            if self.r.set(key, worker, nx=True, px=int(ttl * 1000)):
                return None
            return str(self.r.get(key) or "")

    def renew_claim(self, run_id: str, worker: str, ttl: float) -> bool:
        """Extend our claim; False when it expired or someone else holds it."""
        return bool(self._renew(keys=[self.keys.claim(run_id)], args=[worker, int(ttl * 1000)]))

    def steal_claim(self, run_id: str, holder: str, worker: str, ttl: float) -> bool:
        """Take the claim from ``holder`` (known dead); False when someone else changed it."""
        args: list[Any] = [holder, worker, int(ttl * 1000)]
        return bool(self._steal(keys=[self.keys.claim(run_id)], args=args))

    def count_lost_attempt(self, run_id: str) -> int:
        """Count one more lost attempt of the run (its runner died), in its record and in the
        run counters; returns the record's count."""
        with _errors(self):
            pipe = self.r.pipeline(transaction=True)
            pipe.hincrby(self.keys.run(run_id), "lost_attempts", 1)
            pipe.hincrby(self.keys.run_counts(), "lost_attempts", 1)
            return int(pipe.execute()[0])

    def requeue_lost(self, run_id: str, max_attempts: int, error: str) -> str:
        """Requeue a run whose runner is gone: 'requeued', 'lost', 'claimed' or 'ended'."""
        keys = [self.keys.run(run_id), self.keys.claim(run_id), self.keys.run_counts()]
        with _errors(self):
            args: list[Any] = [max_attempts, time.time(), error]
            return str(self._requeue(keys=keys, args=args))

    def release_claim(self, run_id: str, worker: str, *, pipe: Any = None) -> None:
        """Drop our claim (a no-op when it is not ours); queued on ``pipe`` if given."""
        if pipe is not None:
            pipe.eval(runscripts.RELEASE, 1, self.keys.claim(run_id), worker)
            return
        self._release(keys=[self.keys.claim(run_id)], args=[worker])

    def request_abort(self, run_id: str, ttl: float = 7 * 86400) -> str:
        """Ask for the run to stop; a queued run is marked aborted at once. Returns the state it
        was in ('queued' for a run that thus never starts)."""
        record = self.get(run_id)
        with _errors(self):
            self.r.set(self.keys.abort(run_id), "1", ex=int(ttl))
            self.r.publish(self.keys.abort_channel(), run_id)
        if record.get("state") == QUEUED:
            self.transition(run_id, ABORTED, error="cancelled before it started")
            return QUEUED
        return str(record.get("state", ""))

    def is_aborted(self, run_id: str) -> bool:
        """Whether someone asked to cancel the run."""
        return bool(self.r.exists(self.keys.abort(run_id)))

    def stop_reason(self, run_id: str, worker: str) -> str | None:
        """'cancel' when the run was cancelled, 'drain' when its worker drains, else None."""
        abort, drain = self.r.mget(self.keys.abort(run_id), self.keys.worker_drain(worker))
        return "cancel" if abort else ("drain" if drain else None)

    def ping(self) -> None:
        """Raise StateError when Redis cannot be reached."""
        with _errors(self):
            self.r.ping()


class _errors:
    """Turn redis connection errors into a StateError that says where Redis was expected."""

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
            where = _describe(self.store.r)
            raise StateError(
                f"Redis is unreachable at {where}: {exc}",
                "start redis-server (or `celery-agent up`), or set CELERY_AGENT_REDIS_URL",
            ) from None


def _raised(reply: Any) -> Any:
    """``reply`` of a pipeline run with ``raise_on_error=False``; raises it when it is an error."""
    if isinstance(reply, Exception):
        raise reply
    return reply


def _describe(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix://{kw['path']}"
    return f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def _encode(fields: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for name, value in fields.items():
        if name in _JSON_FIELDS or isinstance(value, dict | list):
            out[name] = json.dumps(value)
        elif isinstance(value, bool):
            out[name] = "1" if value else "0"
        else:
            out[name] = "" if value is None else str(value)
    return out


def _decode(run_id: str, raw: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {"run_id": run_id}
    for name, value in raw.items():
        if name in _JSON_FIELDS and value:
            try:
                out[name] = json.loads(value)
                continue
            except ValueError:
                pass
        out[name] = _number(name, value)
    return out


def _number(name: str, value: str) -> Any:
    if name.endswith("_at") or name in ("exit_code", "attempt", "log_lines", "lost_attempts"):
        try:
            return float(value) if name.endswith("_at") else int(value)
        except ValueError:
            return None
    return value
