"""Docker runs against the venv executor: installing requirements, and a second run end to end.

The requirement is ``six`` from the default index, reached through the worker's index
configuration (on a worker behind a TLS-inspecting proxy the container gets the worker's CA
bundle and pip config), installed into the image ``celery-agent-test:py3`` (``scripts/
build-test-image``). Baselines are the venv executor on the same worker, same run:

- install, cold: ``prepare()`` with the env's cache entry removed (download caches warm, as on a
  worker that ran anything before; the first round also probes the image for its installer, once
  per image), docker vs venv, rounds alternating;
- install, warm: ``prepare()`` on a ready entry (a hit), docker vs venv;
- second run: submit -> result of the same trivial script with the same requirements through the
  agent worker, docker vs venv alternating (goal: docker <= venv + 0.6 s).

    python -m benchmarks --only docker
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from celery_agent import TaskSpec
from celery_agent.errors import ExecutorUnavailable
from celery_agent.executors.base import ExecutorSettings
from celery_agent.executors.docker import DockerExecutor
from celery_agent.executors.docker_engine import connect

from .context import AGENT_QUEUE, Context, quiet
from .report import Row, median

IMAGE = "celery-agent-test:py3"
SECOND_RUN_SLACK = 0.6  #: a second docker run may take this much longer than the venv one
REQUIREMENTS = ["six"]


def run(ctx: Context) -> list[Row]:
    """Install cold and warm, and the second run, docker against venv."""
    reason = _engine_problem()
    if reason:
        return [Row(f"docker: not measured ({reason})", 0.0, None, "s", "none", "-", None)]
    docker_spec, venv_spec = _specs(ctx)
    rows = _install_rows(ctx, docker_spec, venv_spec)
    return rows + _second_run_rows(ctx, docker_spec, venv_spec)


def _engine_problem() -> str | None:
    try:
        client = connect()
    except ExecutorUnavailable as exc:
        return str(exc)[:80]
    try:
        client.images.get(IMAGE)
    except Exception:
        return f"image {IMAGE} missing: run scripts/build-test-image"
    finally:
        client.close()
    return None


def _specs(ctx: Context) -> tuple[TaskSpec, TaskSpec]:
    base = ctx.workload.spec("trivial.py", AGENT_QUEUE)
    fields: dict[str, Any] = {"requirements": REQUIREMENTS, "find_links": [], "no_index": False}
    venv = base.model_copy(update=fields)
    docker = TaskSpec.parse(
        venv.model_dump(exclude_defaults=True) | {"executor": "docker", "docker": {"image": IMAGE}}
    )
    return docker, venv


def _install_rows(ctx: Context, docker_spec: TaskSpec, venv_spec: TaskSpec) -> list[Row]:
    executors = {  # on the agent worker's cache: the runs below then find their entries ready
        "docker": (DockerExecutor(ExecutorSettings(ctx.env_root)), docker_spec),
        "venv": (ctx.executor(), venv_spec),
    }
    cold: dict[str, list[float]] = {"docker": [], "venv": []}
    warm: dict[str, list[float]] = {"docker": [], "venv": []}
    keys: dict[str, str | None] = {}
    for _ in range(ctx.n(3, 1)):
        for name, (executor, spec) in executors.items():
            if keys.get(name):  # the first round finds the cache empty
                executor.env_cache().remove(keys[name])
            seconds, keys[name] = _prepare(executor, spec, ctx.workload.repo, hit=False)
            cold[name].append(seconds)
    for _ in range(ctx.n(20, 3)):
        for name, (executor, spec) in executors.items():
            warm[name].append(_prepare(executor, spec, ctx.workload.repo, hit=True)[0])
    d_cold, v_cold = median(cold["docker"]), median(cold["venv"])
    d_warm, v_warm = median(warm["docker"]), median(warm["venv"])
    rounds = len(cold["docker"])
    return [
        Row(f"docker install cold (six, median of {rounds}) vs venv", d_cold, v_cold, "s",
            "ratio", "-", None),
        Row("docker install warm (cache hit) vs venv", d_warm, v_warm, "ms", "diff", "-", None),
    ]  # fmt: skip


def _prepare(executor: Any, spec: TaskSpec, repo: Path, *, hit: bool) -> tuple[float, str | None]:
    """Seconds of one prepare() that must be a hit (or a miss), and the entry's key."""
    t0 = time.perf_counter()
    prepared = executor.prepare(spec, repo, quiet)
    elapsed = time.perf_counter() - t0
    assert prepared.cache_hit == hit, f"expected a {'hit' if hit else 'miss'}"
    return elapsed, prepared.cache_key


def _second_run_rows(ctx: Context, docker_spec: TaskSpec, venv_spec: TaskSpec) -> list[Row]:
    warmup = (docker_spec, venv_spec) * ctx.n(2, 1)  # the pool children's first runs
    for spec in warmup:
        ctx.submit_and_wait(spec, timeout=300)
    times: dict[str, list[float]] = {"docker": [], "venv": []}
    for _ in range(ctx.n(10, 2)):
        for name, spec in (("docker", docker_spec), ("venv", venv_spec)):
            t0 = time.perf_counter()
            ctx.submit_and_wait(spec)
            times[name].append(time.perf_counter() - t0)
    docker, venv = median(times["docker"]), median(times["venv"])
    bare = median([_bare_container() for _ in range(ctx.n(10, 2))])
    n = len(times["docker"])
    return [
        Row(f"docker second run, six (submit -> result, median of {n}) vs venv", docker, venv,
            "s", "diff", "<= +0.6 s", docker - venv <= SECOND_RUN_SLACK),
        Row("docker second run vs the engine alone (create, start, wait: python3 -c pass)",
            docker, bare, "s", "diff", "-", None),
    ]  # fmt: skip


def _bare_container() -> float:
    """Seconds the engine takes for a container of the image that runs ``python3 -c pass``,
    in a network namespace of its own (the engine's default), removed after it ended."""
    client = connect()
    try:
        t0 = time.perf_counter()
        container = client.containers.create(IMAGE, ["python3", "-c", "pass"], init=True)
        container.start()
        container.wait()
        elapsed = time.perf_counter() - t0
        container.remove(force=True)
        return elapsed
    finally:
        client.close()
