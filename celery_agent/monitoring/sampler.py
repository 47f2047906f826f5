"""GPU memory of one run, sampled from NVML while it runs: mean and peak over the run's processes.

The run's processes are the sampling process's descendants (the runner starts the run as a child of
the pool process that owns the sampler), so no pid has to be handed over. A container's processes
are not descendants and are not counted. Without NVML the sampler does nothing and reports nothing.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import psutil

from .gpu import nvml_available, process_memory

logger = logging.getLogger(__name__)

Reader = Callable[[], dict[str, dict[int, int | None]]]


def descendants(pid: int | None = None) -> set[int]:
    """Pids of every live descendant of ``pid`` (this process by default)."""
    try:
        return {p.pid for p in psutil.Process(pid or os.getpid()).children(recursive=True)}
    except psutil.Error:
        return set()


class RunGpuSampler:
    """Samples the GPU memory the run's processes hold, from a daemon thread."""

    def __init__(
        self,
        interval: float = 2.0,
        read: Reader = process_memory,
        pids: Callable[[], set[int]] = descendants,
        enabled: bool | None = None,
    ) -> None:
        self.interval, self.read, self.pids = interval, read, pids
        self.enabled = nvml_available() if enabled is None else enabled
        self.samples: list[int] = []
        self.per_gpu_peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None  #: made only when there is NVML to read

    def __enter__(self) -> RunGpuSampler:
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="gpu-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception as exc:  # sampling must never break the run
                logger.debug("GPU sample failed: %r", exc)

    def sample(self) -> int:
        """Take one sample now; returns the bytes the run's processes hold on all GPUs."""
        mine = self.pids()
        total = 0
        for uuid, procs in self.read().items():
            used = sum(b or 0 for pid, b in procs.items() if pid in mine)
            if used:
                self.per_gpu_peak[uuid] = max(used, self.per_gpu_peak.get(uuid, 0))
            total += used
        self.samples.append(total)
        return total

    def summary(self) -> dict[str, Any]:
        """{gpu_memory_peak_bytes, gpu_memory_mean_bytes, gpu_samples, gpu_memory_peak_by_gpu}."""
        if not self.samples:
            return {}
        return {
            "gpu_memory_peak_bytes": max(self.samples),
            "gpu_memory_mean_bytes": int(sum(self.samples) / len(self.samples)),
            "gpu_samples": len(self.samples),
            "gpu_memory_peak_by_gpu": dict(self.per_gpu_peak),
        }
