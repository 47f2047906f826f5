"""The conda executor: a cached conda prefix per environment, built with py-rattler (no conda needed).

``TaskSpec(executor="conda", conda={"file": "environment.yml"})``, ``conda={"specs": [...],
"channels": [...]}`` or ``conda={"lock": "pixi.lock"}`` (or a ``conda-lock.yml``):

- specs are solved and installed with py-rattler in a child process; with ``tool`` set to
  ``micromamba``, ``mamba`` or ``conda`` (or ``auto`` and one is on PATH) that tool creates the env
  instead. A lock file installs exactly its packages, always with py-rattler (no solve).
- pip entries (the environment file's ``pip:`` list, ``conda.pip``, a lock's PyPI packages) are
  installed into the env afterwards, with ``uv pip install --python <env python>`` or the env's pip.
- envs live in the same content-addressed cache as venvs (per-key lock, LRU eviction, failure
  cache). The key is the lock's package hashes, or the normalized specs, channels (a local
  channel with a hash of its index), pip entries, platform and virtual packages. A channel that
  publishes new builds does not change the key: lock the env to follow a channel exactly.
- the run gets the env's activation: CONDA_PREFIX, CONDA_DEFAULT_ENV, the variables the packages'
  activate.d scripts set, and the env's bin first on PATH; its python is the run's interpreter.

An env without python runs the entry as an executable from the checkout (a shell script, a
binary), with argv rewriting and CELERY_AGENT_PARAMS but no argparse hook; a ``.py`` or ``-m``
entry in such an env fails at prepare, naming the fix (add python to the specs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import EnvBuildError
from ..spec import CondaOptions, TaskSpec
from .base import Executor, PreparedEnv
from .conda_env import CondaBuild, find_tool
from .conda_inputs import CondaInput, current_platform, key_parts, read_input
from .indexes import plain
from .steps import LogFn

logger = logging.getLogger(__name__)


class CondaExecutor(Executor):
    """Runs a spec in a conda prefix built for its environment file, specs or lock file."""

    name = "conda"

    def unavailable_reason(self) -> str | None:
        """None when py-rattler is importable (it solves, installs and activates envs)."""
        try:
            import rattler  # noqa: F401
        except ImportError:
            return "py-rattler is not installed (pip install 'celery-agent[conda]')"
        return None

    def prepare(self, spec: TaskSpec, source_dir: Path, log: LogFn) -> PreparedEnv:
        """Reuse the cached prefix for this spec's environment, or build it."""
        start = time.perf_counter()
        options = _options(spec)
        if spec.requirements:
            log("env: the conda executor does not install spec.requirements; use conda.pip")
        platform = current_platform()
        inp = read_input(options, Path(source_dir), platform)
        tool = find_tool(options.tool) if inp.kind == "solve" else ("rattler", None)
        cache = self.env_cache()
        key = cache.key(key_parts(inp, platform, tool[0]) | _pip_index(spec, inp))
        build = CondaBuild(
            inp,
            tool,
            spec,
            Path(source_dir),
            cache_dir=Path(self.settings.cache_root) / "conda-pkgs",
            timeout=self.settings.build_timeout,
            installer=self.settings.installer,
            log=log,
            stop=self.settings.stop,
        )
        cached = cache.get_or_build(key, build, label=_label(inp))
        how = "reused" if cached.hit else "built"
        log(f"env: {how} conda env {key} ({cached.path}) in {cached.seconds:.3f}s")
        _check_entry(spec, cached.meta)
        return _prepared(cached.path, cached.meta, key, cached.hit, start)

    def command(self, prepared: PreparedEnv, argv: Sequence[str]) -> list[str]:
        """The env's python, then ``argv``; in an env without python, ``argv`` itself."""
        return [prepared.python, *argv] if prepared.python else list(argv)


def _options(spec: TaskSpec) -> CondaOptions:
    if spec.conda is None:
        raise EnvBuildError(
            "the conda executor needs conda options", "set conda={'file': 'environment.yml'}"
        )
    return spec.conda


def _pip_index(spec: TaskSpec, inp: CondaInput) -> dict[str, Any]:
    """The pip index options, part of the key only when there is something to pip install."""
    if not inp.pip:
        return {}
    return {"find_links": list(spec.find_links)} | plain(spec).key_parts()


def _label(inp: CondaInput) -> str:
    what = inp.specs or inp.locked
    names = ", ".join(what[:4]) + (" ..." if len(what) > 4 else "")
    return f"conda {inp.source}: {names or '-'}"


def _check_entry(spec: TaskSpec, meta: dict[str, Any]) -> None:
    """A python entry needs python in the env; anything else may run as an executable."""
    if meta.get("python") or not (spec.module or spec.entry.endswith(".py")):
        return
    raise EnvBuildError(
        f"entry {spec.entry!r} needs python, but the conda env has no bin/python",
        "add python to the conda specs, or make the entry an executable script",
    )


def _prepared(env: Path, meta: dict[str, Any], key: str, hit: bool, start: float) -> PreparedEnv:
    activation = meta.get("activation") or {}
    return PreparedEnv(
        python=str(meta.get("python") or ""),
        env=dict(activation.get("env") or {"CONDA_PREFIX": str(env)}),
        path_prefix=list(activation.get("path") or [str(env / "bin")]),
        freeze=list(meta.get("freeze", [])),
        cache_key=key,
        cache_hit=hit,
        seconds=time.perf_counter() - start,
        installer=str(meta.get("tool") or "rattler"),
    )
