"""Host metrics from psutil: CPU (total and per core), load, memory, swap, disk, network.

Rates (disk read/write, network rx/tx in bytes per second) are computed between two samples, so the
first sample of a :class:`HostSampler` reports them as None.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import psutil

logger = logging.getLogger(__name__)


class HostSampler:
    """Samples the machine; keeps the previous counters to turn them into rates."""

    def __init__(self, disk_path: str = "/") -> None:
        self.disk_path = disk_path
        self._last: tuple[float, Any, Any] | None = None
        psutil.cpu_percent(percpu=True)  # prime: the next call measures since now

    def sample(self) -> dict[str, Any]:
        """The host's metrics now (CPU % since the previous sample)."""
        per_core = psutil.cpu_percent(percpu=True)
        out: dict[str, Any] = {
            "cpu_percent": round(sum(per_core) / len(per_core), 1) if per_core else None,
            "cpu_per_core": per_core,
            "cpu_count": psutil.cpu_count(),
            "load": _load(),
        }
        out |= _memory() | _disk(self.disk_path) | self._rates()
        return out

    def _rates(self) -> dict[str, Any]:
        now, disk, net = (
            time.monotonic(),
            _safe(psutil.disk_io_counters),
            _safe(psutil.net_io_counters),
        )
        last, self._last = self._last, (now, disk, net)
        dt = now - last[0] if last else 0.0
        return {
            "disk_read_bps": _rate(disk, last and last[1], "read_bytes", dt),
            "disk_write_bps": _rate(disk, last and last[1], "write_bytes", dt),
            "net_rx_bps": _rate(net, last and last[2], "bytes_recv", dt),
            "net_tx_bps": _rate(net, last and last[2], "bytes_sent", dt),
        }


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _memory() -> dict[str, Any]:
    mem, swap = psutil.virtual_memory(), _safe(psutil.swap_memory)
    return {
        "memory_total": mem.total,
        "memory_used": mem.total - mem.available,
        "memory_percent": mem.percent,
        "swap_total": getattr(swap, "total", None),
        "swap_used": getattr(swap, "used", None),
    }


def _disk(path: str) -> dict[str, Any]:
    usage = _safe(psutil.disk_usage, path)
    return {
        "disk_path": path,
        "disk_total": getattr(usage, "total", None),
        "disk_used": getattr(usage, "used", None),
        "disk_percent": getattr(usage, "percent", None),
    }


def _rate(now: Any, before: Any, field: str, dt: float) -> float | None:
    if now is None or not before or dt <= 0:
        return None
    return round(max(0, getattr(now, field) - getattr(before, field)) / dt, 1)


def _safe(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except (OSError, RuntimeError, psutil.Error) as exc:  # counters missing in some containers
        logger.debug("%s unavailable: %r", getattr(fn, "__name__", fn), exc)
        return None
