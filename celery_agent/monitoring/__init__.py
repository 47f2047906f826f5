"""Machine monitoring: host metrics (psutil), GPU metrics (NVML) and per-run GPU sampling.

:func:`snapshot` is what a heartbeat carries: ``{"at", "host": {...}, "gpus": [...]}``. A value the
machine cannot give is None; a machine without NVIDIA's library or driver has an empty GPU list.
"""

from __future__ import annotations

import time
from typing import Any

from .gpu import gpu_metrics, nvml_available
from .host import HostSampler

__all__ = ["HostSampler", "Monitor", "gpu_metrics", "nvml_available"]


class Monitor:
    """Takes machine snapshots; keeps the counters that rates (disk, network) are computed from."""

    def __init__(self, disk_path: str = "/") -> None:
        self.host = HostSampler(disk_path)

    def snapshot(self) -> dict[str, Any]:
        """Host and GPU metrics now."""
        return {"at": time.time(), "host": self.host.sample(), "gpus": gpu_metrics()}
