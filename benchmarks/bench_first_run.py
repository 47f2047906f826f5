"""The first run of a fresh environment: time to its first line and to numpy + scikit-learn imported.

The mode in force is ``import`` (``env_bytecode``), the fastest to both the first line and the
imports done when measured. Measured from the start of the build (the venv executor's ``prepare()``, then the run's python
started) with each way of compiling the installed packages' bytecode: all of it at build time
(``build``), in the background while the run starts (``background``), or by Python as each module
is first imported (``import``). Baseline: the same by hand, ``uv venv`` + ``uv pip install`` +
``python -c``, in the same run. Every variant shares one warm uv cache (filled before timing), so
the rows compare compiling, not downloading. The worker's dispatch is not included (see the
dispatch and throughput rows).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from pathlib import Path

from uv import find_uv_bin

from celery_agent import TaskSpec
from celery_agent.executors.interpreters import base_interpreter

from .context import Context, quiet
from .report import Row, median

#: the local mirror of PyPI on machines without the internet; else PyPI
MIRROR = "file:///opt/pypi/simple" if Path("/opt/pypi/simple").is_dir() else None
REQUIREMENTS = ["numpy", "scikit-learn"]
SCRIPT = (
    "print('first line', flush=True)\n"
    "import numpy, sklearn, sklearn.linear_model, sklearn.ensemble\n"
    "print('imported', flush=True)\n"
)
QUICK_SCRIPT = "print('first line', flush=True)\nimport cabench\nprint('imported', flush=True)\n"
MODES = ("build", "background", "import")
#: the mode in force (``env_bytecode``) must reach the first line in at most this share of the
#: time compiling everything at build takes
FIRST_LINE_SHARE = 0.5


def run(ctx: Context) -> list[Row]:
    """Each mode against the hand-typed baseline, interleaved over the rounds."""
    spec, script = _spec(ctx)
    caches = {"UV_CACHE_DIR": str(ctx.root / "first-run-uv-cache")}
    _by_hand(ctx.root / "first-run-warm", spec, script, caches)  # fills the uv cache
    rounds = ctx.n(3, 1)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in ("hand", *MODES)}
    for i in range(rounds):
        for name in times:
            folder = ctx.root / "first-run" / f"{name}-{i}"
            if name == "hand":
                times[name].append(_by_hand(folder, spec, script, caches))
            else:
                times[name].append(_ours(ctx, folder, spec, script, caches, name))
            shutil.rmtree(folder, ignore_errors=True)
    return _rows(times, rounds, ctx.quick)


def _rows(times: dict[str, list[tuple[float, float]]], rounds: int, quick: bool) -> list[Row]:
    line = {name: median([t[0] for t in got]) for name, got in times.items()}
    imported = {name: median([t[1] for t in got]) for name, got in times.items()}
    what = "local wheel" if quick else "numpy+scikit-learn"
    rows = [
        Row(f"fresh env ({what}, median of {rounds}): first line, bytecode on import vs at build",
            line["import"], line["build"], "s", "ratio", "<= 0.5x",
            line["import"] <= FIRST_LINE_SHARE * line["build"]),
    ]  # fmt: skip
    for mode in MODES:
        rows += [
            Row(f"fresh env, bytecode {mode}: first line vs by hand", line[mode], line["hand"],
                "s", "ratio", "-", None),
            Row(f"fresh env, bytecode {mode}: imports done vs by hand", imported[mode],
                imported["hand"], "s", "ratio", "-", None),
        ]  # fmt: skip
    return rows


def _spec(ctx: Context) -> tuple[TaskSpec, str]:
    if ctx.quick:
        return ctx.workload.spec("first.py", "none"), QUICK_SCRIPT
    fields = {"repo": str(ctx.workload.repo), "entry": "first.py", "requirements": REQUIREMENTS}
    return TaskSpec.parse(fields | ({"index_url": MIRROR} if MIRROR else {})), SCRIPT


def _ours(
    ctx: Context, folder: Path, spec: TaskSpec, script: str, caches: dict[str, str], mode: str
) -> tuple[float, float]:
    """Seconds from prepare() to the run's first line and to its imports done, in ``mode``."""
    saved = {name: os.environ.get(name) for name in caches}
    os.environ.update(caches)
    try:
        executor = ctx.executor(folder / "envs", "uv")
        executor.settings = dataclasses.replace(executor.settings, bytecode=mode)
        t0 = time.perf_counter()
        prepared = executor.prepare(spec, ctx.workload.repo, quiet)
        assert not prepared.cache_hit, "a fresh env must be built"
        return _lines(t0, [prepared.python, "-c", script])
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.update({name: value})


def _by_hand(
    folder: Path, spec: TaskSpec, script: str, caches: dict[str, str]
) -> tuple[float, float]:
    """The same as a person would type it: uv venv, uv pip install, python -c."""
    uv, env_dir = str(find_uv_bin()), folder / "env"
    python = str(env_dir / "bin" / "python")
    install = [uv, "pip", "install", "--quiet", "--python", python]
    install += ["--index-url", spec.index_url] if spec.index_url else []
    for link in spec.find_links:
        install += ["--find-links", link]
    install += ["--no-index"] if spec.no_index else []
    env = dict(os.environ, **caches)
    t0 = time.perf_counter()
    subprocess.run([uv, "venv", "--quiet", "--python", base_interpreter(), str(env_dir)],
                   check=True, env=env)  # fmt: skip
    subprocess.run([*install, *(spec.requirements or [])], check=True, env=env)
    return _lines(t0, [python, "-c", script])


def _lines(t0: float, argv: list[str]) -> tuple[float, float]:
    """Seconds since ``t0`` to the first output line and to the last (the imports done)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # (as a run)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            env=env)  # fmt: skip
    assert proc.stdout is not None
    stamps = [time.perf_counter() - t0 for _ in proc.stdout]
    if proc.wait() != 0 or len(stamps) != 2:
        raise RuntimeError(f"{argv[0]} -c ... exited {proc.returncode} after {len(stamps)} lines")
    return stamps[0], stamps[1]
