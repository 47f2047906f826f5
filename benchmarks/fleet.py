"""A simulated fleet: what N agent workers write to Redis, sent by threads of this process.

Each simulated worker is what a real one writes, through the agent's own code
(:class:`WorkerRegistry`, :class:`RunStore`): a heartbeat every ``interval`` (SMEMBERS of its run
set, then the record hash with a TTL, the ``workers`` zset and the capped ``:hw`` stream in one
pipeline), and, with runs on, one run in flight on a GPU machine: the runner's stop check every
``abort_poll`` (MGET of the cancel and drain flags), a log chunk every ``log_every`` seconds, the claim renewed ``RENEWALS`` times in
its TTL, and a new run every ``run_seconds`` (its record created, claimed, moved through its states
and finished). The snapshot is that of a plausible GPU machine: 64 cores, 8 GPUs with a process.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from celery_agent.keeper import RENEWALS
from celery_agent.settings import Settings
from celery_agent.state import RUNNING, RunStore
from celery_agent.workers import WorkerRegistry, compact

THREADS = 4  #: sending threads (each with its own connection)
LINE = "epoch {n} step 1200/5000 loss 0.4321 acc 0.8812 lr 1.0e-03 grad_norm 1.83 ({n} it/s)"


@dataclass(frozen=True)
class Load:
    """What each simulated worker does, and how often (seconds)."""

    workers: int
    interval: float = Settings.heartbeat_interval  #: heartbeat
    history: int = Settings.heartbeat_history  #: hardware snapshots kept
    abort_poll: float = 1.0  #: the runner's backstop flag read (Settings.abort_poll)
    log_every: float = 1.0  #: one log chunk per second per run
    lines_per_chunk: int = 3
    claim_ttl: float = Settings.claim_ttl  #: renewed RENEWALS times per TTL
    run_seconds: float = 600.0  #: a new run every 10 minutes per worker

    def planned(self, seconds: float, runs: bool) -> float:
        """Round trips the fleet should send in ``seconds`` (a beat counts as two)."""
        per_worker = 2 / self.interval
        if runs:
            per_worker += 1 / self.abort_poll + 1 / self.log_every + RENEWALS / self.claim_ttl
        return per_worker * self.workers * seconds


@dataclass
class SimWorker:
    """One simulated worker: its name, its run in flight, and when each of its writes is due."""

    name: str
    run_id: str = ""
    run_ends: float = 0.0  #: monotonic time its run in flight ends
    due: dict[str, float] = field(default_factory=dict)


class Fleet:
    """N simulated workers on one Redis."""

    def __init__(self, url: str, load: Load, spec: dict[str, Any]) -> None:
        self.url, self.load, self.spec = url, load, spec
        self.record = worker_record()
        self.workers = [SimWorker(f"gpu{i % 8}@node{i // 8:04d}") for i in range(load.workers)]
        self.sent: Counter[str] = Counter()
        self.errors: list[Exception] = []
        self._lock = threading.Lock()

    def store(self) -> RunStore:
        """A run store on its own connection."""
        return RunStore.from_url(self.url)

    def fill_history(self, entries: int, batch: int = 2000) -> None:
        """Beat once per worker and fill its hardware history (as after ``entries`` beats)."""
        store = self.store()
        registry = WorkerRegistry(store.r, store.keys)
        entry = {"s": json.dumps(compact(self.record["snapshot"]))}
        pipe = store.r.pipeline(transaction=False)
        for w in self.workers:
            registry.beat(w.name, self._beat_record(w.name, []), 3 * self.load.interval, 0)
            for _ in range(entries):
                pipe.xadd(store.keys.worker_history(w.name), entry, maxlen=self.load.history,
                          approximate=True)  # fmt: skip
            if len(pipe) >= batch:
                pipe.execute()
        pipe.execute()

    def start_runs(self) -> None:
        """Give each worker a run in flight, started at a random point of its life."""
        store = self.store()
        registry = WorkerRegistry(store.r, store.keys)
        for i, w in enumerate(self.workers):
            self._start_run(store, registry, w, left=(i + 0.5) / len(self.workers))

    def drive(self, seconds: float, runs: bool) -> Counter[str]:
        """Send the fleet's writes for ``seconds``; returns the round trips sent, by kind."""
        self.sent = Counter()
        now = time.monotonic()
        for i, w in enumerate(self.workers):  # spread each kind's writes evenly over its period
            offset = (i + 0.5) / len(self.workers)
            w.due = {"beat": now + offset * self.load.interval}
            if runs:
                w.due |= {"run": w.run_ends, "abort": now + offset * self.load.abort_poll,
                          "log": now + offset * self.load.log_every,
                          "claim": now + offset * self.load.claim_ttl / RENEWALS}  # fmt: skip
        threads = [
            threading.Thread(target=self._send, args=(self.workers[i::THREADS], now + seconds))
            for i in range(THREADS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self.errors:
            raise RuntimeError(f"a sending thread failed: {self.errors[0]!r}") from self.errors[0]
        return self.sent

    def finish_runs(self, count: int) -> list[str]:
        """End the runs of the first ``count`` workers as the pipeline does; returns their ids."""
        store = self.store()
        registry = WorkerRegistry(store.r, store.keys)
        ended = [w.run_id for w in self.workers[:count]]
        for w in self.workers[:count]:
            _finish_run(store, registry, w)
        return ended

    def _send(self, workers: list[SimWorker], end: float) -> None:
        try:
            self._send_until(workers, end)
        except Exception as err:  # Redis refused: drive() raises it in the benchmark's thread
            with self._lock:
                self.errors.append(err)

    def _send_until(self, workers: list[SimWorker], end: float) -> None:
        store = self.store()
        registry = WorkerRegistry(store.r, store.keys)
        sent: Counter[str] = Counter()
        while (now := time.monotonic()) < end:
            for w in workers:
                for kind, due in list(w.due.items()):
                    if due <= now:
                        sent[kind] += self._do(kind, w, store, registry)
            soonest = min(due for w in workers for due in w.due.values())
            time.sleep(min(0.05, max(0.0, soonest - time.monotonic())))
        with self._lock:
            self.sent += sent

    def _do(self, kind: str, w: SimWorker, store: RunStore, registry: WorkerRegistry) -> int:
        """One write of ``kind`` by ``w``; schedules its next one; returns its round trips."""
        now, load = time.monotonic(), self.load
        if kind == "beat":
            record = self._beat_record(w.name, registry.current_runs(w.name))
            registry.beat(w.name, record, ttl=3 * load.interval, history=load.history)
            w.due[kind] = now + load.interval
            return 2
        if kind == "abort":
            _stop_check(store, w.run_id, w.name)
            w.due[kind] = now + load.abort_poll
            return 1
        if kind == "log":
            store.append_log(w.run_id, [LINE.format(n=i) for i in range(load.lines_per_chunk)])
            w.due[kind] = now + load.log_every
            return 1
        if kind == "claim":
            store.renew_claim(w.run_id, w.name, load.claim_ttl)
            w.due[kind] = now + load.claim_ttl / RENEWALS
            return 1
        _finish_run(store, registry, w)  # kind == "run": the run ended; the next one starts
        return 3 + self._start_run(store, registry, w)

    def _start_run(
        self, store: RunStore, registry: WorkerRegistry, w: SimWorker, left: float = 1.0
    ) -> int:
        """Create, claim and start a run on ``w`` as submit + the pipeline do, with ``left`` of its
        life still to go; returns the round trips."""
        w.run_id = uuid.uuid4().hex
        store.create_run(w.run_id, self.spec, self.spec["queue"])
        store.claim(w.run_id, w.name, self.load.claim_ttl)
        registry.add_run(w.name, w.run_id)
        store.transition(w.run_id, "preparing", worker=w.name, attempt=1)
        store.update(w.run_id, commit="0" * 40, env_key="venv-" + "f" * 16)
        store.transition(w.run_id, RUNNING, gpus=["GPU-" + w.name])
        w.run_ends = time.monotonic() + left * self.load.run_seconds
        w.due["run"] = w.run_ends
        return 7

    def beat_all(self, ttl: float) -> None:
        """Beat once for every worker, its heartbeat living ``ttl`` seconds (no history)."""
        store = self.store()
        registry = WorkerRegistry(store.r, store.keys)
        for w in self.workers:
            runs = [w.run_id] if w.run_id else []
            registry.beat(w.name, self._beat_record(w.name, runs), ttl, 0)

    def _beat_record(self, name: str, runs: list[str]) -> dict[str, Any]:
        snapshot = self.record["snapshot"] | {"at": time.time()}
        host = name.partition("@")[2]  # eight workers a machine, each machine its own GPUs
        return self.record | {"name": name, "hostname": host, "at": time.time(), "runs": runs,
                              "snapshot": snapshot}  # fmt: skip


def _stop_check(store: RunStore, run_id: str, worker: str) -> None:
    """The runner's look at its stop flags: cancel and drain in one MGET (the abort flag alone
    where the store has no drain flag)."""
    stop_reason = getattr(store, "stop_reason", None)
    if stop_reason is not None:
        stop_reason(run_id, worker)
    else:
        store.is_aborted(run_id)


def _finish_run(store: RunStore, registry: WorkerRegistry, w: SimWorker) -> None:
    """Write a run's end as the pipeline does: terminal state with the summary, claim released."""
    summary = {"exit_code": 0, "log_lines": 1800, "output_dir": f"/srv/runs/{w.run_id}/output",
               "timings": {"checkout": 0.02, "env": 0.01, "run": 600.0, "total": 600.1},
               "usage": {"cpu_seconds": 4321.5, "max_rss": 12_884_901_888,
                         "gpu_memory_max": {"GPU-" + w.name: 70_000_000_000}},
               "params": {"lr": 0.001, "batch_size": 64}}  # fmt: skip
    store.transition(w.run_id, "succeeded", force=True, **summary)
    store.release_claim(w.run_id, w.name)
    registry.remove_run(w.name, w.run_id)


def worker_record(cores: int = 64, gpus: int = 8) -> dict[str, Any]:
    """A heartbeat record of a GPU machine, as :class:`celery_agent.worker.Heartbeat` writes it."""
    gpu_list = [_gpu(i) for i in range(gpus)]
    static = [{k: g[k] for k in ("index", "uuid", "name", "memory_total")} for g in gpu_list]
    host = {"cpu_percent": 63.2, "cpu_per_core": [61.5 + (i % 7) for i in range(cores)],
            "cpu_count": cores, "load": [40.1, 39.8, 38.2], "memory_total": 1_081_801_330_688,
            "memory_used": 412_316_860_416, "memory_percent": 38.1, "swap_total": 0,
            "swap_used": 0, "disk_path": "/", "disk_total": 3_840_755_982_336,
            "disk_used": 1_234_567_890_123, "disk_percent": 32.1, "disk_read_bps": 10_485_760.0,
            "disk_write_bps": 2_097_152.0, "net_rx_bps": 125_829_120.0,
            "net_tx_bps": 3_145_728.0}  # fmt: skip
    return {"name": "", "hostname": "node0000", "pid": 4242, "started_at": time.time(),
            "queues": ["gpu", "gpu0"], "concurrency": 1, "gpu_mode": "static", "gpus": static,
            "interval": 5.0, "snapshot": {"at": time.time(), "host": host, "gpus": gpu_list}}  # fmt: skip


def _gpu(index: int) -> dict[str, Any]:
    """One GPU's live metrics, as :func:`celery_agent.monitoring.gpu_metrics` returns them."""
    return {"index": index, "uuid": f"GPU-{uuid.UUID(int=index + 1)}", "name": "NVIDIA H100 80GB HBM3",
            "memory_total": 85_520_809_984, "pci_bus_id": f"00000000:{index + 0x18:02X}:00.0",
            "util": 97, "memory_util": 41, "memory_used": 71_203_553_280, "temperature": 64,
            "power_w": 612.4, "power_limit_w": 700.0,
            "processes": [{"pid": 100_000 + index, "memory": 71_000_000_000}]}  # fmt: skip
