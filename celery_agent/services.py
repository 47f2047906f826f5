"""Services mode and the worker's start-up line.

A *services* worker runs many light, mostly idle runs at once: pipeline controllers that submit
other runs and wait for them. It is an ordinary worker with a thread pool (a waiting controller
costs a thread, not a process), many slots and no GPU:

    celery -A celery_agent worker -Q services -P threads -c 32 --cpu-only -n services@%h

(``celery-agent services`` runs exactly that.) Each run is still its own supervised process group
with its own log, timeout and cancel: the pool thread only supervises it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

from .gpus import CPU, UNBOUND, WorkerGpus

SERVICES_QUEUE = "services"
SERVICES_CONCURRENCY = 32
SERVICES_NAME = "services@%h"
#: the worker options that make a services worker
POOL_ARGS = ("-P", "threads", "--cpu-only")


def services_argv(
    queues: str = SERVICES_QUEUE,
    concurrency: int = SERVICES_CONCURRENCY,
    name: str = SERVICES_NAME,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line of a services worker (run with this interpreter)."""
    return [
        sys.executable, "-m", "celery", "-A", "celery_agent", "worker", "-Q", queues,
        *POOL_ARGS, "-c", str(concurrency), "-n", name, *extra,
    ]  # fmt: skip


def startup_line(
    worker_name: str,
    queues: Sequence[str],
    gpus: WorkerGpus,
    executors_available: Mapping[str, str | None],
) -> str:
    """One line saying what this worker serves: queues, GPUs, usable executors and why the
    others are not, e.g. ``worker gpu0@h: queues gpu0,default; GPUs static 0 (GPU-1a2b3c4d);
    executors venv, local; docker: ...``."""
    usable = [name for name, why in executors_available.items() if why is None]
    parts = [
        f"worker {worker_name}: queues {','.join(queues) or '-'}",
        f"GPUs {gpu_text(gpus)}",
        f"executors {', '.join(usable) or 'none'}",
    ]
    parts += [f"{name}: {why}" for name, why in executors_available.items() if why is not None]
    return "; ".join(parts)


def gpu_text(gpus: WorkerGpus) -> str:
    """'static 0 (GPU-1a2b3c4d), 1 (GPU-...)', 'none (cpu-only)' or 'unbound (all visible)'."""
    if gpus.mode == CPU:
        return "none (cpu-only)"
    if gpus.mode == UNBOUND and not gpus.devices:
        return "unbound (all visible)"
    listed = ", ".join(f"{d.index} ({d.uuid[:12]})" for d in gpus.devices)
    return f"{gpus.mode} {listed}".strip()
