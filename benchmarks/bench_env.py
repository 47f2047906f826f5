"""Environments: reusing a cached venv (a hit), and building one cold.

Hit: ``VenvExecutor.prepare()`` on a ready entry, in a warm process (as a worker's pool child runs
every run after its first) and as the first call of a fresh process; baseline: ``python -c pass``
in that env. Cold: our executor with uv and with virtualenv + pip (bytecode left to the first import, see
``bench_first_run``) against ``uv venv`` + ``uv pip install`` typed by hand, with and without
``--compile-bytecode``. Every cold
variant gets its own empty UV_CACHE_DIR and PIP_CACHE_DIR, so each one downloads everything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from uv import find_uv_bin

from celery_agent import TaskSpec
from celery_agent.executors.interpreters import base_interpreter

from .cluster import ROOT
from .context import AGENT_QUEUE, Context, quiet
from .report import Row, median

HIT_OVERHEAD = 0.050  #: a hit may cost this much more than starting the env's python
COLD_SLACK = 1.15  #: our uv build may take this many times the hand-typed one (both compiling)
FULL_REQUIREMENTS = ["numpy", "scikit-learn", "pyyaml"]


# -- hit ------------------------------------------------------------------------------------------
def run_hit(ctx: Context) -> list[Row]:
    """Time prepare() on a cache hit against ``python -c pass`` in the same env."""
    n = ctx.n(100, 10)
    spec = ctx.workload.spec("first.py", AGENT_QUEUE)
    env = ctx.env()
    executor = ctx.executor()
    warm = _samples(n, lambda: executor.prepare(spec, ctx.workload.repo, quiet))
    first = median([_first_prepare(ctx, spec) for _ in range(ctx.n(5, 2))])
    start = median(_samples(ctx.n(30, 5), lambda: _python_pass(env.python)))
    hit = median(warm)
    return [
        Row("env cache hit: prepare()", hit, start, "ms", "diff", "<= +50 ms", hit - start <= HIT_OVERHEAD),
        Row("env cache hit: 1st in a process", first, start, "ms", "diff", "<= +50 ms",
            first - start <= HIT_OVERHEAD),
    ]  # fmt: skip


def _samples(n: int, step: Callable[[], object], warmup: int = 2) -> list[float]:
    """``n`` timings of ``step`` after ``warmup`` untimed calls."""
    out = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        step()
        if i >= warmup:
            out.append(time.perf_counter() - t0)
    return out


def _python_pass(python: str) -> None:
    subprocess.run([python, "-c", "pass"], check=True, stdin=subprocess.DEVNULL)


_FIRST_PREPARE = """
import json, sys, time
from pathlib import Path
from celery_agent import TaskSpec
from celery_agent.executors.interpreters import base_interpreter
from celery_agent.executors.base import ExecutorSettings
from celery_agent.executors.venv import VenvExecutor
root, spec, repo = sys.argv[1], TaskSpec.parse(json.loads(sys.argv[2])), Path(sys.argv[3])
executor = VenvExecutor(ExecutorSettings(Path(root)))
t0 = time.perf_counter()
executor.prepare(spec, repo, lambda line: None)
print(time.perf_counter() - t0)
"""


def _first_prepare(ctx: Context, spec: TaskSpec) -> float:
    """prepare() timed inside a fresh process: its first call probes the interpreter."""
    argv = [sys.executable, "-c", _FIRST_PREPARE, str(ctx.env_root), json.dumps(spec.to_json()),
            str(ctx.workload.repo)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT)
    return float(done.stdout.strip().splitlines()[-1])


# -- cold -----------------------------------------------------------------------------------------
def run_cold(ctx: Context) -> list[Row]:
    """Build the same env cold four ways; compare ours with uv by hand."""
    spec = _cold_spec(ctx)
    rounds = ctx.n(3, 1)
    times: dict[str, list[float]] = {name: [] for name in _VARIANTS}
    for i in range(rounds):  # interleaved, so a slow spell of the machine or network hits all
        for name, build in _VARIANTS.items():
            folder = ctx.root / "cold" / f"{name.replace(' ', '-').replace(',', '')}-{i}"
            times[name].append(build(ctx, folder, spec))
            shutil.rmtree(folder, ignore_errors=True)
    hand, hand_c, ours_uv, ours_pip = (median(times[name]) for name in _VARIANTS)
    what = "local wheel" if ctx.quick else "numpy+sklearn+pyyaml"
    return [
        Row(f"cold env ({what}, median of {rounds}): ours uv vs uv by hand, neither compiles",
            ours_uv, hand, "s", "ratio", "<= 1.15x", ours_uv <= COLD_SLACK * hand),
        Row("cold env: ours uv vs uv by hand --compile-bytecode", ours_uv, hand_c, "s", "ratio",
            "-", None),
        Row("cold env: ours pip (virtualenv) vs ours uv", ours_pip, ours_uv, "s", "ratio", "-", None),
    ]  # fmt: skip


def _cold_spec(ctx: Context) -> TaskSpec:
    if ctx.quick:
        return ctx.workload.spec("first.py", AGENT_QUEUE)
    return TaskSpec.parse(
        {"repo": str(ctx.workload.repo), "entry": "first.py", "requirements": FULL_REQUIREMENTS}
    )


@contextmanager
def _fresh_caches(folder: Path) -> Iterator[dict[str, str]]:
    """Empty uv and pip caches for one variant, set in this process's environment meanwhile."""
    caches = {"UV_CACHE_DIR": str(folder / "uv-cache"), "PIP_CACHE_DIR": str(folder / "pip-cache")}
    saved = {name: os.environ.get(name) for name in caches}
    os.environ.update(caches)
    try:
        yield caches
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _ours(ctx: Context, folder: Path, spec: TaskSpec, installer: str) -> float:
    """Seconds our executor takes to build the env (a miss) with ``installer``."""
    with _fresh_caches(folder):
        executor = ctx.executor(folder / "envs", installer)
        t0 = time.perf_counter()
        prepared = executor.prepare(spec, ctx.workload.repo, quiet)
        elapsed = time.perf_counter() - t0
    assert not prepared.cache_hit, "a cold build must not be a hit"
    return elapsed


def _by_hand(folder: Path, spec: TaskSpec, compile_bytecode: bool) -> float:
    """Seconds of ``uv venv`` + ``uv pip install`` as a person would type them."""
    uv, env_dir = str(find_uv_bin()), folder / "env"
    install = [uv, "pip", "install", "--quiet", "--python", str(env_dir / "bin" / "python")]
    install += ["--compile-bytecode"] if compile_bytecode else []
    for link in spec.find_links:
        install += ["--no-index", "--find-links", link]
    with _fresh_caches(folder) as caches:
        env = dict(os.environ, **caches)
        t0 = time.perf_counter()
        subprocess.run([uv, "venv", "--quiet", "--python", base_interpreter(), str(env_dir)],
                       check=True, env=env)  # fmt: skip
        subprocess.run([*install, *(spec.requirements or [])], check=True, env=env)
        return time.perf_counter() - t0


#: the cold variants, each (context, its own empty folder, spec) -> seconds
_VARIANTS: dict[str, Callable[[Context, Path, TaskSpec], float]] = {
    "uv by hand": lambda ctx, folder, spec: _by_hand(folder, spec, False),
    "uv by hand, compiled": lambda ctx, folder, spec: _by_hand(folder, spec, True),
    "ours uv": lambda ctx, folder, spec: _ours(ctx, folder, spec, "uv"),
    "ours pip": lambda ctx, folder, spec: _ours(ctx, folder, spec, "pip"),
}
