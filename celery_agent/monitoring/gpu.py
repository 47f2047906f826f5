"""GPU metrics from NVML (nvidia-ml-py), every call through :func:`nvml`, which initializes once.

No library, no driver or no device means no GPUs: :func:`gpu_metrics` returns ``[]`` and
:func:`nvml_available` False, never an exception. A value a device cannot report (power on some
boards, temperature in some VMs) is None. NVML is initialized again after a fork, so a pool child
never uses its parent's handle.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, Any] = {"pid": None, "module": None, "reason": ""}


def _after_fork() -> None:
    """Give a forked child fresh locks: a thread of its parent (the heartbeat) may have held one
    while the fork happened, and a copied held lock is never released in the child."""
    global _lock
    _lock = threading.Lock()
    pynvml: Any = sys.modules.get("pynvml")
    if pynvml is not None and hasattr(pynvml, "libLoadLock"):
        pynvml.libLoadLock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


class NvmlUnavailable(Exception):
    """NVML cannot be used on this machine (no package, no library, no driver)."""


def _load() -> Any:
    """The initialized pynvml module for this process; raises NvmlUnavailable."""
    with _lock:
        if _state["pid"] == os.getpid():
            if _state["module"] is None:
                raise NvmlUnavailable(_state["reason"])
            return _state["module"]
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded, ...
            reason = f"NVML unavailable: {exc!r}"
            logger.debug("%s", reason)
            _known(None, reason)
            raise NvmlUnavailable(reason) from None
        _known(pynvml, "")
        return pynvml


def _known(module: Any, reason: str) -> None:
    """Record this process's outcome; the pid last, as :func:`nvml_available` reads it unlocked."""
    _state["module"], _state["reason"] = module, reason
    _state["pid"] = os.getpid()


def nvml(name: str, *args: Any) -> Any:
    """Call ``pynvml.<name>(*args)``: the one place NVML is called. Raises NvmlUnavailable."""
    return getattr(_load(), name)(*args)


def value(name: str, *args: Any) -> Any:
    """``nvml(name, *args)``, or None when NVML or the device cannot say."""
    try:
        return nvml(name, *args)
    except NvmlUnavailable:
        return None
    except Exception as exc:  # NVMLError_NotSupported and friends: a missing value
        logger.debug("%s%r: %r", name, args, exc)
        return None


def nvml_available() -> bool:
    """Whether NVML works here (the package, library and driver are all present)."""
    if _state["pid"] == os.getpid():  # (known for this process: no lock, no exception)
        return _state["module"] is not None
    try:
        _load()
        return True
    except NvmlUnavailable:
        return False


def cuda_driver_version() -> tuple[int, int] | None:
    """The newest CUDA version the installed driver supports, as (major, minor); None without
    NVML. NVML reports it as 1000 * major + 10 * minor (12040 is CUDA 12.4)."""
    raw = value("nvmlSystemGetCudaDriverVersion")
    if not isinstance(raw, int) or raw <= 0:
        return None
    return raw // 1000, (raw % 1000) // 10


def nvml_unavailable_reason() -> str | None:
    """Why NVML cannot be used here (no package, library or driver), or None when it can."""
    try:
        _load()
    except NvmlUnavailable as exc:
        return str(exc)
    return None


@dataclass
class GpuDevice:
    """One physical GPU as NVML names it."""

    index: int
    uuid: str
    name: str | None = None
    memory_total: int | None = None  #: bytes
    pci_bus_id: str | None = None


def devices() -> list[GpuDevice]:
    """The machine's GPUs in NVML order (PCI bus order); [] without NVML."""
    count = value("nvmlDeviceGetCount") or 0
    out = []
    for index in range(count):
        handle = value("nvmlDeviceGetHandleByIndex", index)
        uuid = _text(value("nvmlDeviceGetUUID", handle)) if handle is not None else None
        if uuid:
            out.append(_device(index, uuid, handle))
    return out


def _device(index: int, uuid: str, handle: Any) -> GpuDevice:
    mem = value("nvmlDeviceGetMemoryInfo", handle)
    pci = value("nvmlDeviceGetPciInfo", handle)
    return GpuDevice(
        index=index,
        uuid=uuid,
        name=_text(value("nvmlDeviceGetName", handle)),
        memory_total=_attr(mem, "total"),
        pci_bus_id=_text(_attr(pci, "busId")),
    )


def gpu_metrics() -> list[dict[str, Any]]:
    """Per GPU: identity, utilization %, memory used/total (bytes), temperature, power, processes."""
    out = []
    for dev in devices():
        handle = value("nvmlDeviceGetHandleByIndex", dev.index)
        out.append(asdict(dev) | _live(handle))
    return out


def _live(handle: Any) -> dict[str, Any]:
    util = value("nvmlDeviceGetUtilizationRates", handle)
    mem = value("nvmlDeviceGetMemoryInfo", handle)
    power = value("nvmlDeviceGetPowerUsage", handle)
    limit = value("nvmlDeviceGetEnforcedPowerLimit", handle)
    return {
        "util": _attr(util, "gpu"),
        "memory_util": _attr(util, "memory"),
        "memory_used": _attr(mem, "used"),
        "temperature": value("nvmlDeviceGetTemperature", handle, 0),  # 0: NVML_TEMPERATURE_GPU
        "power_w": None if power is None else power / 1000,
        "power_limit_w": None if limit is None else limit / 1000,
        "processes": _processes(handle),
    }


def _processes(handle: Any) -> list[dict[str, Any]]:
    """Compute and graphics processes on the GPU: pid and memory used (None when hidden)."""
    found: dict[int, int | None] = {}
    for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        for proc in value(getter, handle) or []:
            used = getattr(proc, "usedGpuMemory", None)
            found[int(proc.pid)] = used if isinstance(used, int) and used >= 0 else None
    return [{"pid": pid, "memory": used} for pid, used in sorted(found.items())]


def process_memory() -> dict[str, dict[int, int | None]]:
    """GPU uuid -> {pid: bytes used} for every process NVML sees on each GPU."""
    out = {}
    for dev in devices():
        handle = value("nvmlDeviceGetHandleByIndex", dev.index)
        out[dev.uuid] = {p["pid"]: p["memory"] for p in _processes(handle)}
    return out


def _attr(obj: Any, name: str) -> Any:
    return None if obj is None else getattr(obj, name, None)


def _text(raw: Any) -> str | None:
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)
