"""Which Celery workers this machine runs: the plan behind `celery-agent workers`.

One plan serves every machine, so a single Procfile line (``celery-agent workers --per-gpu``)
fits a laptop and an eight-GPU box alike:

- ``per-gpu`` (the default): one worker per GPU found, pinned to it (``--gpus N``), serving its own
  queue ``gpuN`` first, then the shared queues (``gpu,default``), named ``gpuN@%h``;
- ``pooled``: one worker owning every GPU found (``--gpus 0-N --dynamic``), one slot per GPU, each
  run leasing the GPUs its spec asks for, serving the shared queues, named ``gpus@%h``;
- no GPU at all: one CPU worker (``--cpu-only``) on ``default``, named ``cpu@%h``.

GPUs are found the way a worker finds them (NVML, or ``CELERY_AGENT_FAKE_GPUS=N``), so the plan
never names a GPU its worker would refuse.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from .gpus import FAKE_GPUS_ENV, inventory, parse_selection
from .monitoring.gpu import GpuDevice, nvml_unavailable_reason

PER_GPU, POOLED = "per-gpu", "pooled"
SHARED_QUEUES = "gpu,default"  #: what a GPU worker serves after its own queue
CPU_QUEUES = "default"  #: what the CPU worker of a machine without GPUs serves


@dataclass(frozen=True)
class WorkerLine:
    """One Celery worker of the plan: its name (``gpu0@%h``) and its ``celery worker`` options."""

    name: str
    options: tuple[str, ...]

    def argv(self, extra: Sequence[str] = ()) -> list[str]:
        """The worker's command line, run with this interpreter; ``extra`` goes last."""
        return [sys.executable, "-m", "celery", "-A", "celery_agent", "worker",
                *self.options, *extra]  # fmt: skip


@dataclass(frozen=True)
class Layout:
    """The workers to run and one line saying why (for the start-up log)."""

    workers: tuple[WorkerLine, ...]
    reason: str


def plan(
    mode: str = PER_GPU,
    selection: str = "all",
    queues: str = SHARED_QUEUES,
    cpu_queues: str = CPU_QUEUES,
    concurrency: int = 1,
    found: Sequence[GpuDevice] | None = None,
) -> Layout:
    """The workers this machine runs; raises ConfigError for a selection naming a missing GPU."""
    available = inventory() if found is None else list(found)
    chosen = parse_selection(selection, available)
    if not chosen:
        cpu = WorkerLine("cpu@%h", _options(cpu_queues, ("--cpu-only",), concurrency, "cpu@%h"))
        return Layout((cpu,), f"no GPU on this machine ({no_gpu_reason()}): one CPU worker")
    if mode == POOLED:
        gpus = ",".join(str(d.index) for d in chosen)
        slots = concurrency * len(chosen)
        line = WorkerLine("gpus@%h", _options(queues, ("--gpus", gpus, "--dynamic"), slots,
                                                "gpus@%h"))  # fmt: skip
        return Layout((line,), f"{len(chosen)} GPU(s) ({gpus}): one worker leasing them")
    lines = tuple(gpu_worker(d.index, queues, concurrency) for d in chosen)
    listed = ", ".join(str(d.index) for d in chosen)
    return Layout(lines, f"{len(chosen)} GPU(s) ({listed}): one worker per GPU")


def gpu_worker(index: int, queues: str = SHARED_QUEUES, concurrency: int = 1) -> WorkerLine:
    """The worker pinned to GPU ``index``: queue ``gpu<index>`` first, then ``queues``."""
    name = f"gpu{index}@%h"
    own = ",".join(_unique([f"gpu{index}", *_split(queues)]))
    return WorkerLine(name, _options(own, ("--gpus", str(index)), concurrency, name))


def no_gpu_reason() -> str:
    """Why no GPU was found: fake GPUs declared as none, NVML's own words, or NVML lists none."""
    declared = os.environ.get(FAKE_GPUS_ENV, "").strip()
    if declared:
        return f"{FAKE_GPUS_ENV}={declared}"
    return nvml_unavailable_reason() or "NVML lists no GPU"


def _options(queues: str, gpus: tuple[str, ...], concurrency: int, name: str) -> tuple[str, ...]:
    return ("-Q", ",".join(_split(queues)), *gpus, "-c", str(concurrency), "-n", name)


def _split(queues: str) -> list[str]:
    return [q.strip() for q in queues.split(",") if q.strip()]


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
