"""Every Redis key name the agent uses, in one place (``{p}`` is the prefix, ``ca`` by default).

Runs:

- ``{p}:run:{id}`` hash: the run record; ``{p}:runs`` sorted set of run ids by submit time
- ``{p}:runs:by:{queue|user|tag}:{value}`` sorted sets: the same, for the runs of one queue, user or
  tag (written at submit; ``{p}:runs:by:complete`` once the runs recorded before were added too)
- ``{p}:runs:counts`` hash of counters since the deployment began: ``submitted``, ``requeued``
  and one per end state (``succeeded``, ``failed``, ...), ``lost_attempts`` (a runner found gone
  under a run); never reset
- ``{p}:runs:histograms`` hash of run duration and queue wait buckets per queue (see
  :mod:`.histograms`); never reset
- ``{p}:run:{id}:metrics`` stream of scalars the run reported (name, value, step)
- ``{p}:run:{id}:log`` stream of line chunks; ``{p}:run:{id}:claim`` who runs it (TTL): ``worker|host|pid``
- ``{p}:run:{id}:abort`` cancel flag; ``{p}:abort`` pub/sub channel that nudges runners
- ``{p}:run:{id}:upload`` the background upload of an ended run's outputs (TTL, renewed while it
  goes on): ``host|pid``; ``{p}:uploads`` set of the run ids with one (see :mod:`.uploads`)
- ``{p}:run:{id}:secrets`` JSON of the values the record shows masked (secret env, repo
  credentials), kept (TTL a week) until the run ends, for a requeue
- ``{p}:retention:{runs|searches}`` where the retention sweep goes on in its index next time;
  ``{p}:retention:lock`` (TTL) paces the deletions to one sweep a minute

Searches (see :mod:`.search.record`):

- ``{p}:search:{id}`` hash: state, objective, direction, sampler, space, base spec, out_dir, times,
  best trial (number, value, run id); ``{p}:searches`` sorted set of search ids by start time
- ``{p}:search:{id}:trials`` hash: trial number -> JSON of the trial (params, run id, state, value)
- ``{p}:search:{id}:cancel`` flag: set to cancel the search (its controller cancels the trials)

Workers and GPUs:

- ``{p}:worker:{name}`` hash with a TTL of ~3 heartbeats: the worker's latest heartbeat
- ``{p}:worker:{name}:hw`` capped stream of hardware snapshots (history for plots)
- ``{p}:worker:{name}:drain`` set when the worker's drain grace ran out: its runs stop and requeue
- ``{p}:worker:{name}:runs`` set of run ids the worker's pool is running now (pipeline adds/removes)
- ``{p}:worker:{name}:reserved`` hash run id -> delivery tag of each run message the worker holds
  (Redis broker; rewritten each heartbeat, handed back by the sweep once the worker is dead)
- ``{p}:workers`` sorted set: every worker seen, scored by its last heartbeat time
- ``{p}:workers:gone`` hash: worker name -> JSON {"state": "stopped"|"lost", "at": time}
- ``{p}:envcache:stats`` hash of env cache outcomes per executor kind: ``{kind}|hits``,
  ``{kind}|misses``, ``{kind}|failures`` and the build-time histogram (see :mod:`.histograms`)
- ``{p}:gpu:{host}:{uuid}`` a dynamic GPU lease: value ``{worker}/{run id}``, with a TTL
- ``{p}:sweep:lock`` short lock so two beats never sweep at once

Fair order and quotas (see :mod:`.fairorder`, :mod:`.quotas`):

- ``{p}:fair:{queue}:users`` set of users with runs waiting on the queue
- ``{p}:fair:{queue}:wait:{user}`` sorted set of the user's waiting runs (by priority, then age)
- ``{p}:fair:{queue}:parked:{user}`` sorted set of the user's runs taken off the broker to wait
- ``{p}:fair:{queue}:pass`` hash user -> how far the user got in the queue's round (weighted
  starts), and ``*vtime``, the round's place now
- ``{p}:fair:{queue}:owed`` hash user -> since when other users' runs wait for the user's turn
- ``{p}:fair:queues`` set of queues with parked runs (woken by run ends and the sweep)
- ``{p}:quotas`` hash ``user:NAME[@QUEUE]`` or ``project:NAME[@QUEUE]`` -> JSON limits
- ``{p}:active:{user|project}:{name}`` hash run id -> ``queue gpus`` of its runs that run now
  (an entry whose claim is gone is dropped as it is read)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key names under one prefix."""

    prefix: str = "ca"

    def _join(self, *parts: str) -> str:
        """A prefixed key: _join('run', id) -> 'ca:run:<id>'."""
        return ":".join((self.prefix, *parts))

    def run(self, run_id: str) -> str:
        """The run record hash."""
        return self._join("run", run_id)

    def runs(self) -> str:
        """Sorted set of run ids by submit time."""
        return self._join("runs")

    def runs_by(self, field: str, value: str) -> str:
        """Sorted set of the ids of the runs whose ``field`` (queue, user, tag) is ``value``."""
        return self._join("runs", "by", field, value)

    def runs_by_complete(self) -> str:
        """Set once every run recorded is in the :meth:`runs_by` indexes."""
        return self._join("runs", "by", "complete")

    def run_counts(self) -> str:
        """Hash of run counters: submitted, requeued and one per end state."""
        return self._join("runs", "counts")

    def run_histograms(self) -> str:
        """Hash of run duration and queue wait histograms, per queue."""
        return self._join("runs", "histograms")

    def env_cache_stats(self) -> str:
        """Hash of env cache hits, misses, failures and build times, per executor kind."""
        return self._join("envcache", "stats")

    def log(self, run_id: str) -> str:
        """The run's log stream."""
        return self._join("run", run_id, "log")

    def log_sent(self, run_id: str) -> str:
        """Hash of how many lines (or metrics) each writer of the run's log (or metrics stream)
        has appended, writer -> count: a batch sent again after its reply was lost appends only
        what is not there yet."""
        return self._join("run", run_id, "logsent")

    def metrics(self, run_id: str) -> str:
        """The run's metrics stream: scalars the script reports (name, value, step)."""
        return self._join("run", run_id, "metrics")

    def claim(self, run_id: str) -> str:
        """The run's claim (the worker running it)."""
        return self._join("run", run_id, "claim")

    def upload(self, run_id: str) -> str:
        """The background upload of the run's outputs (TTL, renewed while it goes on)."""
        return self._join("run", run_id, "upload")

    def digest(self, run_id: str) -> str:
        """The worker hashing the ended run's kept files (TTL, renewed while it does)."""
        return self._join("run", run_id, "digest")

    def uploads(self) -> str:
        """Set of the run ids whose outputs upload in the background."""
        return self._join("uploads")

    def abort(self, run_id: str) -> str:
        """The run's cancel flag."""
        return self._join("run", run_id, "abort")

    def abort_channel(self) -> str:
        """Pub/sub channel announcing cancel requests."""
        return self._join("abort")

    def worker(self, name: str) -> str:
        """The worker's heartbeat hash."""
        return self._join("worker", name)

    def worker_history(self, name: str) -> str:
        """The worker's capped stream of hardware snapshots."""
        return self._join("worker", name, "hw")

    def worker_runs(self, name: str) -> str:
        """Set of run ids the worker runs now."""
        return self._join("worker", name, "runs")

    def worker_reserved(self, name: str) -> str:
        """Hash of the run messages the worker took: run id -> delivery tag."""
        return self._join("worker", name, "reserved")

    def worker_drain(self, name: str) -> str:
        """Flag telling a draining worker's runs to stop and go back to their queue."""
        return self._join("worker", name, "drain")

    def workers(self) -> str:
        """Sorted set of known workers by last heartbeat."""
        return self._join("workers")

    def workers_gone(self) -> str:
        """Hash of workers that stopped or were lost."""
        return self._join("workers", "gone")

    def gpu_lease(self, host: str, uuid: str) -> str:
        """A dynamic lease on one GPU of one machine."""
        return self._join("gpu", host, uuid)

    def sweep_lock(self) -> str:
        """The cluster sweep's lock."""
        return self._join("sweep", "lock")

    def secrets(self, run_id: str) -> str:
        """The values a run's record shows masked, kept for a requeue."""
        return self._join("run", run_id, "secrets")

    def retention_cursor(self, index: str) -> str:
        """Where the retention sweep goes on in ``index`` ('runs' or 'searches')."""
        return self._join("retention", index)

    def search(self, search_id: str) -> str:
        """The search's hash."""
        return self._join("search", search_id)

    def search_trials(self, search_id: str) -> str:
        """The search's trials hash."""
        return self._join("search", search_id, "trials")

    def search_cancel(self, search_id: str) -> str:
        """The search's cancel flag."""
        return self._join("search", search_id, "cancel")

    def searches(self) -> str:
        """Sorted set of search ids by start time."""
        return self._join("searches")

    def retention_lock(self) -> str:
        """Set (with a TTL) by the sweep that deletes old runs: the next sweeps leave it be."""
        return self._join("retention", "lock")

    def fair_users(self, queue: str) -> str:
        """Set of the users with runs waiting on ``queue``."""
        return self._join("fair", queue, "users")

    def fair_wait(self, queue: str, user: str) -> str:
        """Sorted set of ``user``'s runs waiting on ``queue``."""
        return self._join("fair", queue, "wait", user)

    def fair_parked(self, queue: str, user: str) -> str:
        """Sorted set of ``user``'s runs on ``queue`` that wait off the broker (parked)."""
        return self._join("fair", queue, "parked", user)

    def fair_pass(self, queue: str) -> str:
        """Hash of each user's place in ``queue``'s round (and the round's, ``*vtime``)."""
        return self._join("fair", queue, "pass")

    def fair_owed(self, queue: str) -> str:
        """Hash user -> since when runs of others on ``queue`` wait for the user's turn."""
        return self._join("fair", queue, "owed")

    def fair_queues(self) -> str:
        """Set of the queues with parked runs."""
        return self._join("fair", "queues")

    def quotas(self) -> str:
        """Hash of quotas set with `celery-agent quota`: scope -> JSON limits."""
        return self._join("quotas")

    def active(self, kind: str, name: str) -> str:
        """Hash run id -> 'queue gpus' of the runs of a user or project ('user'/'project')."""
        return self._join("active", kind, name)
