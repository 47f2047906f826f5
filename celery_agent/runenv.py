"""The run's environment: built from an allow-list, never inherited wholesale.

A worker's environment holds its own secrets (git tokens, Redis passwords) and settings that change
how Python behaves (PYTHONDONTWRITEBYTECODE, PYTHONPATH of the worker's venv). User code gets only
what it needs: the allow-listed basics, the env's PATH, the agent's variables and the spec's ``env``.

Secret values: a spec's ``secret_env`` values (and credentials in a Redis URL) are scrubbed from the
run's log. The worker names them to :func:`secret_values` through ``CELERY_AGENT_SECRET_ENV`` in
the run's environment (:func:`with_secrets`). The run record holds the spec masked; the values a
requeued run needs again wait in ``{p}:run:{id}:secrets`` until the run ends (:func:`stash`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SpecError
from .gitcmd import redact
from .spec import MASK, TaskSpec

if TYPE_CHECKING:
    from .settings import Settings
    from .state import RunStore

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
#: variables whose values may hold credentials (a Redis password in a URL): shown redacted
SECRET_VARS = ("CELERY_AGENT_REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")
#: comma-separated names of the run's variables whose values are secret (the spec's secret_env)
SECRET_NAMES_ENV = "CELERY_AGENT_SECRET_ENV"
#: seconds the secret values of an unfinished run are kept for a requeue (a week)
SECRETS_TTL = 7 * 86400


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
    executor's bin directories go first on PATH; its PYTHONPATH (the project's import root) comes
    after the agent's (the argparse hook, then the spec's).
    """
    env = passed(base)
    env.setdefault("PATH", os.defpath)
    env.update({name: str(threads) for name in THREAD_VARS})
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    env.update(agent)
    if extra and extra.get("PYTHONPATH") and agent.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join([agent["PYTHONPATH"], extra["PYTHONPATH"]])
    # the agent's PYTHONPATH already merges the spec's (the argparse hook must stay first on it)
    env.update({k: v for k, v in spec_env.items() if not (k == "PYTHONPATH" and k in agent)})
    if path_prefix:
        env["PATH"] = os.pathsep.join([*path_prefix, env["PATH"]])
    return env


def passed(base: Mapping[str, str]) -> dict[str, str]:
    """The allow-listed variables of ``base`` (a worker keeps those of ``os.environ`` once per
    process: reading ``os.environ`` decodes every variable it holds, on every run)."""
    return {k: v for k, v in base.items() if k in _PASSED or k.startswith(PASS_PREFIXES)}


_PASSED = frozenset(PASS_THROUGH)


def agent_vars(run_id: str, run_dir: Path, output_dir: Path, queue: str) -> dict[str, str]:
    """The variables that tell a run who it is and where to put its files."""
    return {
        "CELERY_AGENT_RUN_ID": run_id,
        "CELERY_AGENT_RUN_DIR": str(run_dir),
        "CELERY_AGENT_OUTPUT_DIR": str(output_dir),
        "CELERY_AGENT_QUEUE": queue,
    }


def run_vars(
    run_id: str, run_dir: Path, output_dir: Path, spec: TaskSpec, settings: Settings
) -> dict[str, str]:
    """Who the run is, where its files go, and (outside containers) how to reach the agent, so a
    controller run can submit further runs and wait for them (:func:`agent_vars`,
    :func:`cluster_vars`)."""
    agent = agent_vars(run_id, run_dir, output_dir, spec.queue)
    if spec.executor != "docker":  # a container gets no credentials of the worker's
        agent |= cluster_vars(settings)
    return agent


def cluster_vars(settings: Settings) -> dict[str, str]:
    """Broker and state-store settings, so a controller run can submit runs and wait for them.

    Read from the worker's settings (environment, config file), not from its raw environment;
    the broker and result backend only when set. For runs on the worker's host: a container
    gets none of them (a loopback URL means nothing there, and it keeps the run's own env).
    """
    out = {"CELERY_AGENT_REDIS_URL": settings.redis_url, "CELERY_AGENT_PREFIX": settings.prefix}
    if settings.broker_url:
        out["CELERY_BROKER_URL"] = settings.broker_url
    if settings.result_backend:
        out["CELERY_RESULT_BACKEND"] = settings.result_backend
    return out


def redacted(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` fit to show (logs, records): credentials removed from the values of SECRET_VARS,
    the values named in ``CELERY_AGENT_SECRET_ENV`` masked."""
    names = _secret_names(env)
    return {k: MASK if k in names else redact(v) if k in SECRET_VARS else v for k, v in env.items()}


def secret_values(env: Mapping[str, str]) -> list[str]:
    """The values to scrub from any text: SECRET_VARS that hold credentials, and the values of the
    variables named in ``CELERY_AGENT_SECRET_ENV`` (longest first, so no part of one is left)."""
    values = {v for k, v in env.items() if k in SECRET_VARS and redact(v) != v}
    values |= {env[k] for k in _secret_names(env) if env.get(k)}
    return sorted(values, key=lambda v: (-len(v), v))


def _secret_names(env: Mapping[str, str]) -> set[str]:
    return {n.strip() for n in env.get(SECRET_NAMES_ENV, "").split(",") if n.strip()}


def scrub(lines: list[str], secrets: list[str]) -> list[str]:
    """``lines`` with every secret value replaced by ``***`` (a run printing its Redis URL)."""
    if not secrets:
        return lines
    out = []
    for line in lines:
        for secret in secrets:
            if secret:
                line = line.replace(secret, MASK)
        out.append(line)
    return out


# -- secret values of a spec, between submit and the run's end --------------------------------------
def stash(store: RunStore, run_id: str, spec: TaskSpec, ttl: float = SECRETS_TTL) -> None:
    """Keep what :meth:`TaskSpec.masked` hides (secret env values, repo credentials) for the run's
    requeues: the sweep and a drain send the run again from its masked record."""
    hidden = _hidden(spec)
    if hidden:
        store.r.set(_key(store, run_id), json.dumps(hidden), ex=int(ttl))


def forget(store: RunStore, run_id: str) -> None:
    """Drop the kept secret values of a run that ended."""
    store.r.delete(_key(store, run_id))


def with_secrets(store: RunStore, run_id: str, spec: TaskSpec) -> TaskSpec:
    """``spec`` as the worker runs it: masked values put back from :func:`stash`, and the secret
    names in ``CELERY_AGENT_SECRET_ENV`` so the run's log is scrubbed of their values.

    Raises :class:`SpecError` naming the variables whose values are no longer kept."""
    if not spec.secret_env and "://" not in spec.repo:  # nothing masked, nothing redacted
        return spec
    masked = spec.masked_names
    kept = (
        json.loads(store.r.get(_key(store, run_id)) or "{}") if masked or "://" in spec.repo else {}
    )
    env = {**spec.env, **{k: v for k, v in kept.get("env", {}).items() if k in masked}}
    missing = [name for name in spec.secret_env if env.get(name) == MASK]
    if missing:
        raise SpecError(
            f"run {run_id}: the values of secret env {', '.join(missing)} are no longer kept",
            "submit it again (celery-agent rerun RUN_ID --env NAME=value, or export NAME first)",
        )
    if spec.secret_env:
        env[SECRET_NAMES_ENV] = ",".join(spec.secret_env)
    repo = kept.get("repo") if kept.get("repo") and redact(kept["repo"]) == spec.repo else None
    return spec.model_copy(update={"env": env} | ({"repo": repo} if repo else {}))


def hides_values(spec: TaskSpec) -> bool:
    """Whether the spec has values its record shows masked (secret env, repo credentials)."""
    return bool(spec.secret_env) or redact(spec.repo) != spec.repo


def _hidden(spec: TaskSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if spec.secret_env:
        out["env"] = {k: spec.env[k] for k in spec.secret_env if spec.env[k] != MASK}
    if redact(spec.repo) != spec.repo:
        out["repo"] = spec.repo
    return {k: v for k, v in out.items() if v}


def _key(store: RunStore, run_id: str) -> str:
    return store.keys.secrets(run_id)
