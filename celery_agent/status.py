"""The cluster at a glance: workers and their GPUs, as plain data (the CLI renders it)."""

from __future__ import annotations

import time
from typing import Any

from .workers import ONLINE, WorkerRegistry


def cluster_status(registry: WorkerRegistry, now: float | None = None) -> dict[str, Any]:
    """{"workers": [...], "gpus": [...]}: one row per known worker, one per GPU of online ones."""
    now = time.time() if now is None else now
    rows = registry.overview()
    return {"at": now, "workers": [worker_row(r, now) for r in rows], "gpus": gpu_rows(rows)}


def worker_row(record: dict[str, Any], now: float) -> dict[str, Any]:
    """What the workers table shows of one worker."""
    started = record.get("started_at")
    host = (record.get("snapshot") or {}).get("host") or {}
    return {
        "name": record["name"],
        "host": record.get("hostname"),
        "state": record["state"],
        "queues": record.get("queues") or [],
        "gpu_mode": record.get("gpu_mode"),
        "gpus": [g.get("index") for g in record.get("gpus") or []],
        "runs": record.get("runs") or [],
        "uptime": round(now - started, 1) if started and record["state"] == ONLINE else None,
        "last_seen": record.get("last_seen"),
        "cpu_percent": host.get("cpu_percent"),
        "memory_percent": host.get("memory_percent"),
        "pid": record.get("pid"),
        "env_cache": record.get("env_cache"),
        "artifact_store": record.get("artifact_store"),  #: root, ok, error (see worker.py)
    }


def gpu_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per GPU of each online machine: owners, live metrics (None when unknown), lease."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in records:
        if rec["state"] != ONLINE:
            continue
        live = {g["uuid"]: g for g in (rec.get("snapshot") or {}).get("gpus") or []}
        owned = rec.get("gpus") or list(live.values())
        for gpu in owned:
            key = (rec.get("hostname") or "", gpu["uuid"])
            row = rows.setdefault(key, _gpu_row(key[0], gpu, live.get(gpu["uuid"], {})))
            if rec.get("gpus"):
                row["workers"].append(rec["name"])
            holder = (rec.get("leases") or {}).get(gpu["uuid"])
            row["lease"] = holder or row["lease"]
    return sorted(rows.values(), key=lambda r: (r["host"], r["index"] or 0))


def _gpu_row(host: str, gpu: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    procs = live.get("processes")
    return {
        "host": host,
        "index": gpu.get("index"),
        "uuid": gpu["uuid"],
        "name": gpu.get("name") or live.get("name"),
        "util": live.get("util"),
        "memory_used": live.get("memory_used"),
        "memory_total": live.get("memory_total") or gpu.get("memory_total"),
        "temperature": live.get("temperature"),
        "power_w": live.get("power_w"),
        "processes": None if procs is None else len(procs),
        "workers": [],
        "lease": None,
    }
