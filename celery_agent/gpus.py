"""GPU sets: which GPUs a worker owns, which a run gets, and the environment that pins a run to them.

A worker is started in one of four modes:

- ``unbound`` (no ``--gpus``): runs see whatever the machine shows them; nothing is pinned;
- ``static`` (``--gpus 0,1``): every run of the worker sees exactly the worker's GPUs;
- ``dynamic`` (``--gpus 0-7 --dynamic``): each run leases the GPUs its spec asks for (see leases);
- ``cpu`` (``--cpu-only``): runs see no GPU at all.

The inventory comes from NVML. For machines without GPUs (tests, CI), ``CELERY_AGENT_FAKE_GPUS=N``
declares N fake GPUs (indices 0..N-1, UUIDs ``GPU-00000000-0000-4000-8000-00000000000<i>``): the
selection, lease and pinning logic then runs unchanged against them. Pinning uses UUIDs, which
``CUDA_VISIBLE_DEVICES`` and ``NVIDIA_VISIBLE_DEVICES`` both accept and which, unlike indices, mean
the same GPU to every process; ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` makes CUDA's order match NVML's.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from .errors import ConfigError, GpuUnavailable
from .monitoring.gpu import GpuDevice, devices

logger = logging.getLogger(__name__)

FAKE_GPUS_ENV = "CELERY_AGENT_FAKE_GPUS"
WORKER_GPUS_ENV = "CELERY_AGENT_WORKER_GPUS"  #: the worker's GPU set, passed to its pool children
UNBOUND, STATIC, DYNAMIC, CPU = "unbound", "static", "dynamic", "cpu"
_ITEM = re.compile(r"^(\d+)(?:-(\d+))?$")


def fake_uuid(index: int) -> str:
    """The UUID of declared fake GPU ``index``."""
    return f"GPU-00000000-0000-4000-8000-{index:012d}"


def inventory(environ: Mapping[str, str] | None = None) -> list[GpuDevice]:
    """This machine's GPUs: the declared fake ones when CELERY_AGENT_FAKE_GPUS is set, else NVML's."""
    environ = os.environ if environ is None else environ
    declared = environ.get(FAKE_GPUS_ENV, "").strip()
    if declared:
        try:
            count = int(declared)
        except ValueError:
            raise ConfigError(
                f"{FAKE_GPUS_ENV}={declared!r} is not a number", "give a GPU count, e.g. 2"
            ) from None
        return [GpuDevice(i, fake_uuid(i), name="fake GPU") for i in range(count)]
    return devices()


def parse_selection(text: str, available: Sequence[GpuDevice]) -> list[GpuDevice]:
    """The GPUs that ``text`` names among ``available``: 'all', '0', '0,2', '0-3', or GPU-UUIDs."""
    text = text.strip()
    if text.lower() == "all":
        return list(available)
    by_index = {d.index: d for d in available}
    by_uuid = {d.uuid: d for d in available}
    chosen: list[GpuDevice] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        for key in _expand(item):
            dev = by_uuid.get(key) if isinstance(key, str) else by_index.get(key)
            if dev is None:
                raise ConfigError(f"GPU {key} is not on this machine", _have(available))
            if dev not in chosen:
                chosen.append(dev)
    return chosen


def _expand(item: str) -> list[int | str]:
    if item.startswith(("GPU-", "MIG-")):
        return [item]
    match = _ITEM.match(item)
    if not match:
        raise ConfigError(
            f"GPU selection {item!r} is not valid", "use 0, 0,1, 0-3, all or a GPU-UUID"
        )
    first, last = int(match[1]), int(match[2] or match[1])
    if last < first:
        raise ConfigError(f"GPU range {item!r} runs backwards", f"write {last}-{first}")
    return list(range(first, last + 1))


def _have(available: Sequence[GpuDevice]) -> str:
    if not available:
        return f"no GPU was found (NVML); declare fake ones for tests with {FAKE_GPUS_ENV}=N"
    return "this machine has " + ", ".join(f"{d.index} ({d.uuid})" for d in available)


@dataclass
class WorkerGpus:
    """A worker's GPU mode and the GPUs it owns."""

    mode: str = UNBOUND
    devices: list[GpuDevice] = field(default_factory=list)

    @classmethod
    def from_options(
        cls, gpus: str | None, dynamic: bool = False, cpu_only: bool = False,
        available: Sequence[GpuDevice] | None = None,
    ) -> WorkerGpus:  # fmt: skip
        """The worker's set from its --gpus / --dynamic / --cpu-only options."""
        if cpu_only and gpus:
            raise ConfigError("--cpu-only and --gpus contradict each other", "give one of them")
        if dynamic and not gpus:
            raise ConfigError("--dynamic needs --gpus", "e.g. --gpus 0-7 --dynamic")
        if cpu_only:
            return cls(CPU)
        if not gpus:
            return cls(UNBOUND)
        found = inventory() if available is None else available
        return cls(DYNAMIC if dynamic else STATIC, parse_selection(gpus, found))

    def to_json(self) -> str:
        """The set as JSON (for the environment of pool children and for heartbeats)."""
        return json.dumps({"mode": self.mode, "devices": [asdict(d) for d in self.devices]})

    @classmethod
    def from_json(cls, text: str) -> WorkerGpus:
        """The set :meth:`to_json` wrote."""
        data = json.loads(text)
        return cls(data["mode"], [GpuDevice(**d) for d in data["devices"]])

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WorkerGpus:
        """The set the worker's main process published (unbound when none was)."""
        raw = (os.environ if environ is None else environ).get(WORKER_GPUS_ENV)
        return cls.from_json(raw) if raw else cls(UNBOUND)

    def describe(self) -> str:
        """'static 0,1' / 'dynamic 0-7' / 'cpu' / 'unbound', for logs."""
        if not self.devices:
            return self.mode
        return f"{self.mode} " + ",".join(str(d.index) for d in self.devices)

    def request(self, wanted: int | str | None) -> list[GpuDevice] | int:
        """What a run asking ``wanted`` GPUs gets: the devices (static) or how many (dynamic).

        Raises GpuUnavailable at once when the worker cannot ever satisfy the request.
        """
        if self.mode in (UNBOUND, CPU):
            if self.mode == CPU and wanted not in (None, 0):
                raise GpuUnavailable(f"the run asks for GPUs ({wanted}) but this worker is --cpu-only",
                               "send it to a queue served by a GPU worker")  # fmt: skip
            return []
        if wanted is None or wanted == "all":
            return list(self.devices) if (self.mode == STATIC or wanted == "all") else 0
        if isinstance(wanted, int):
            self._check_count(wanted)
            return list(self.devices) if self.mode == STATIC else wanted
        return self._named(wanted)

    def _check_count(self, wanted: int) -> None:
        if wanted > len(self.devices):
            raise GpuUnavailable(
                f"the run asks for {wanted} GPUs but this worker owns {len(self.devices)} "
                f"({self.describe()})",
                "ask for fewer, or send it to a queue whose workers own more GPUs",
            )

    def _named(self, wanted: str) -> list[GpuDevice]:
        try:
            return parse_selection(wanted, self.devices)
        except ConfigError as err:
            raise GpuUnavailable(
                f"the run asks for GPUs {wanted!r}: {err.message}",
                f"this worker owns {self.describe()}",
            ) from None


def asked(wanted: int | str | None) -> str:
    """A run's ``gpus`` as the fair-order gate reads it from the run's record, knowing no device:
    '' (not said), 'all', 'K' (a count) or '=K' (K GPUs named)."""
    if wanted is None:
        return ""
    if isinstance(wanted, int) or wanted.strip().isdigit():
        return str(int(wanted))
    if wanted.strip().lower() == "all":
        return "all"
    try:
        named = {key for item in wanted.split(",") if item.strip() for key in _expand(item.strip())}
    except ConfigError:
        return ""  # (its worker says what is wrong with it)
    return f"={len(named)}"


def gpu_ids(gpus: Sequence[GpuDevice]) -> list[str]:
    """The ids that name ``gpus`` to CUDA and Docker: UUIDs where known, indices otherwise."""
    return [d.uuid or str(d.index) for d in gpus]


def pin_env(mode: str, gpus: Sequence[GpuDevice]) -> dict[str, str]:
    """The variables that make a run see exactly ``gpus`` ({} for an unbound worker)."""
    if mode == UNBOUND:
        return {}
    ids = ",".join(gpu_ids(gpus))
    return {
        "CUDA_VISIBLE_DEVICES": ids,
        "NVIDIA_VISIBLE_DEVICES": ids or "void",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
