"""A uv.lock project built cold: our venv executor against ``uv sync --frozen`` typed by hand.

The project (pyproject.toml, no build system, so uv takes it as virtual) is locked once, before
any timing, with ``uv lock``: full mode locks numpy, scikit-learn and pyyaml against the machine's
local index when it has one (``file:///opt/pypi/simple``), else uv's default index; quick mode the
workload's local wheel. Each variant gets its own empty UV_CACHE_DIR (so each one fetches and
unpacks everything) and its own env folder; the variants run interleaved, and the table has the
medians. By hand: ``UV_PROJECT_ENVIRONMENT=env uv sync --frozen --python <base>``, with and
without ``--compile-bytecode`` (our build leaves bytecode to the first import, ``env_bytecode``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from uv import find_uv_bin

from celery_agent import TaskSpec
from celery_agent.executors.interpreters import base_interpreter, find_interpreter

from .context import AGENT_QUEUE, Context, quiet
from .report import Row, median

SLACK = 1.10  #: our cold build may take this many times `uv sync --frozen` by hand (no .pyc)
FULL = ["numpy", "scikit-learn", "pyyaml"]
LOCAL_INDEX = Path("/opt/pypi/simple")


def run(ctx: Context) -> list[Row]:
    """Build the locked env cold three ways; compare ours with ``uv sync --frozen`` by hand."""
    project, what = _locked_project(ctx)
    spec = TaskSpec.parse({"repo": str(project), "entry": "train.py", "queue": AGENT_QUEUE})
    rounds = ctx.n(3, 1)
    variants: dict[str, Callable[[Path], float]] = {
        "by hand": lambda folder: _by_hand(project, folder, compiled=False),
        "by hand, compiled": lambda folder: _by_hand(project, folder, compiled=True),
        "ours": lambda folder: _ours(ctx, spec, project, folder),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(rounds):
        for name, build in variants.items():
            folder = ctx.root / "lock-cold" / f"{name.replace(' ', '-').replace(',', '')}-{i}"
            times[name].append(build(folder))
            shutil.rmtree(folder, ignore_errors=True)
    hand, hand_c, ours = (median(times[name]) for name in variants)
    return [
        Row(f"uv.lock cold env ({what}, median of {rounds}): ours vs uv sync --frozen, no .pyc",
            ours, hand, "s", "ratio", "<= 1.10x", ours <= SLACK * hand),
        Row("uv.lock cold env: ours vs uv sync --frozen --compile-bytecode", ours, hand_c, "s",
            "ratio", "-", None),
    ]  # fmt: skip


def _locked_project(ctx: Context) -> tuple[Path, str]:
    """A project folder with pyproject.toml and its uv.lock (locked now, untimed)."""
    project = ctx.root / "lock-project"
    project.mkdir(parents=True, exist_ok=True)
    # the interpreter is probed once per worker process, at its first run of any kind: done here,
    # untimed, as a worker that has run anything has done it (by hand, uv finds it itself)
    find_interpreter(None, uv=str(find_uv_bin()))
    (project / "train.py").write_text("print('ok')\n")
    if ctx.quick:
        deps, args, what = (
            ["cabench"],
            ["--no-index", "--find-links", str(ctx.workload.wheels)],
            "local wheel",
        )
    else:
        deps, what = FULL, "numpy+sklearn+pyyaml"
        args = ["--index-url", LOCAL_INDEX.as_uri()] if LOCAL_INDEX.is_dir() else []
    listed = ", ".join(f'"{dep}"' for dep in deps)
    major, minor = sys.version_info[:2]  # this interpreter's minor only: wheels are per version
    (project / "pyproject.toml").write_text(
        f'[project]\nname = "bench"\nversion = "0.1"\n'
        f'requires-python = "=={major}.{minor}.*"\ndependencies = [{listed}]\n'
    )
    env = dict(os.environ, UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never")
    lock = [str(find_uv_bin()), "lock", "--quiet", "--python", base_interpreter(), *args]
    subprocess.run(lock, cwd=project, env=env, check=True)
    return project, what


def _caches(folder: Path) -> dict[str, str]:
    return {"UV_CACHE_DIR": str(folder / "uv-cache"), "PIP_CACHE_DIR": str(folder / "pip-cache")}


def _ours(ctx: Context, spec: TaskSpec, project: Path, folder: Path) -> float:
    saved = {name: os.environ.get(name) for name in _caches(folder)}
    os.environ.update(_caches(folder))
    try:
        executor = ctx.executor(folder / "envs", "uv")
        t0 = time.perf_counter()
        prepared = executor.prepare(spec, project, quiet)
        elapsed = time.perf_counter() - t0
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
    source = str(prepared.facts.get("env_source"))
    assert not prepared.cache_hit and source.startswith("uv.lock"), source
    _background_compile_done()
    return elapsed


def _background_compile_done(timeout: float = 600) -> None:
    """Wait (untimed) for the build's background bytecode compilation, so that it does not slow
    the next variant down: each variant is timed on a machine that is otherwise as it was."""
    compiling = [c for c in psutil.Process().children(recursive=True) if _compiles(c)]
    psutil.wait_procs(compiling, timeout=timeout)


def _compiles(proc: psutil.Process) -> bool:
    try:
        return "compileall" in proc.cmdline()
    except psutil.Error:
        return False


def _by_hand(project: Path, folder: Path, *, compiled: bool) -> float:
    """Seconds of ``uv sync --frozen`` into a new env, as a person would type it."""
    env = dict(os.environ, UV_PROJECT_ENVIRONMENT=str(folder / "env"), **_caches(folder))
    argv = [str(find_uv_bin()), "sync", "--frozen", "--quiet", "--python", base_interpreter()]
    argv += ["--compile-bytecode"] if compiled else []
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=project, env=env, check=True)
    return time.perf_counter() - t0
