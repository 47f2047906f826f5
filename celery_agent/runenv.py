"""The run's environment: built from an allow-list, never inherited wholesale.

A worker's environment holds its own secrets (git tokens, Redis passwords) and settings that change
how Python behaves (PYTHONDONTWRITEBYTECODE, PYTHONPATH of the worker's venv). User code gets only
what it needs: the allow-listed basics, the env's PATH, the agent's variables and the spec's ``env``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

#: variables passed from the worker to every run when set
PASS_THROUGH = (
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "LD_LIBRARY_PATH",
    "CUDA_HOME", "CUDA_PATH", "HF_HOME", "TORCH_HOME", "XDG_CACHE_HOME",
)  # fmt: skip
#: prefixes of variables passed through (locale and GPU library tuning)
PASS_PREFIXES = ("LC_", "NCCL_")
#: thread-pool sizes set to the run's CPU share unless the spec sets them
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
CONCURRENCY_ENV = "CELERY_AGENT_CONCURRENCY"


def cpu_share(environ: Mapping[str, str] | None = None) -> int:
    """CPU cores per run: the machine's cores over the worker's pool size (at least 1)."""
    environ = os.environ if environ is None else environ
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    try:
        slots = max(1, int(environ.get(CONCURRENCY_ENV, "") or cores))
    except ValueError:
        slots = cores
    return max(1, cores // slots)


def build(
    *,
    base: Mapping[str, str],
    spec_env: Mapping[str, str],
    agent: Mapping[str, str],
    path_prefix: Sequence[str] = (),
    extra: Mapping[str, str] | None = None,
    threads: int = 1,
) -> dict[str, str]:
    """The full environment of a run.

    Layers, later wins: allow-listed ``base`` variables, thread counts, the executor's variables
    (``extra``), the agent's ``CELERY_AGENT_*`` variables, then the spec's own ``env``. The
    executor's bin directories go first on PATH.
    """
    env = {k: v for k, v in base.items() if k in PASS_THROUGH or k.startswith(PASS_PREFIXES)}
    env.setdefault("PATH", os.defpath)
    env.update({name: str(threads) for name in THREAD_VARS})
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    env.update(agent)
    # the agent's PYTHONPATH already merges the spec's (the argparse hook must stay first on it)
    env.update({k: v for k, v in spec_env.items() if not (k == "PYTHONPATH" and k in agent)})
    if path_prefix:
        env["PATH"] = os.pathsep.join([*path_prefix, env["PATH"]])
    return env


def agent_vars(run_id: str, run_dir: Path, output_dir: Path, queue: str) -> dict[str, str]:
    """The variables that tell a run who it is and where to put its files."""
    return {
        "CELERY_AGENT_RUN_ID": run_id,
        "CELERY_AGENT_RUN_DIR": str(run_dir),
        "CELERY_AGENT_OUTPUT_DIR": str(output_dir),
        "CELERY_AGENT_QUEUE": queue,
    }
