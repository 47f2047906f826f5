"""The agent's own settings, layered: defaults < config file < environment < explicit overrides.

Each value remembers where it came from (``Settings.sources``), so ``celery-agent config`` and error
messages can say which layer set it. The environment is passed in, never read at import time.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
ENV_PREFIX = "CELERY_AGENT_"
#: the PyTorch wheel index; ``{variant}`` is ``cpu`` or a CUDA build such as ``cu121``
DEFAULT_TORCH_TEMPLATE = "https://download.pytorch.org/whl/{variant}"
#: the CUDA builds PyTorch publishes, oldest first; a driver runs builds up to its CUDA version
DEFAULT_CUDA_VARIANTS = ("cu118", "cu121", "cu124", "cu126", "cu128", "cu129", "cu130")


@dataclass(frozen=True)
class Settings:
    """Typed settings of one agent process (worker, CLI or library caller)."""

    redis_url: str = DEFAULT_REDIS_URL
    broker_url: str | None = None  # CELERY_BROKER_URL overrides redis_url for the broker
    result_backend: str | None = None  # CELERY_RESULT_BACKEND likewise
    prefix: str = "ca"
    home: Path = field(default_factory=lambda: Path.home() / ".celery-agent")
    installer: str = "auto"
    max_envs: int = 20
    env_cache_max_gb: float | None = None  # GB the cached environments may take (per executor)
    max_env_gb: float | None = None  # the former name of env_cache_max_gb, still read
    input_cache_max_gb: float | None = None  # GB runs' inputs may take here (None: no bound)
    env_bytecode: str = (
        "import"  # when packages are compiled: import (by Python), background, build
    )
    index_url: str | None = None  # the package index a spec without one installs from (a mirror)
    extra_index_urls: tuple[
        str, ...
    ] = ()  # more indexes for specs that name none (space-separated)
    torch_index_template: str = DEFAULT_TORCH_TEMPLATE  # the torch wheel index per build ("": off)
    torch_cuda_variants: tuple[str, ...] = DEFAULT_CUDA_VARIANTS  # CUDA builds of torch there
    env_failure_ttl: float = 600.0
    env_build_timeout: float | None = 3600.0  # seconds an environment build may take
    source_timeout: float | None = 1800.0  # seconds a run's source stage may take (clone, fetch)
    grace: float = 10.0
    claim_ttl: float = 12.0  # seconds a dead runner's claim outlives it (renewed every quarter)
    drain_grace: float = 300.0  # seconds a stopping worker lets its runs finish before requeueing
    record_retry: float = 120.0  # seconds a run's final state is retried while Redis is away
    abort_poll: float = 1.0  # backstop read of the cancel/drain flags; pub/sub is the fast path
    log_maxlen: int = 100_000
    keep_source: bool = False  # keep each run's worktree in its run folder (none is reused)
    checkouts_kept: int = 8  # pristine worktrees kept per repository for reuse (0: none)
    heartbeat_interval: float = 2.0  # seconds between a worker's heartbeats (TTL: three of them)
    heartbeat_history: int = 720  # hardware snapshots kept per worker (24 min at 2 s)
    sweep_interval: float = 2.0  # seconds between cluster sweeps (beat and each worker)
    amqp_queue_type: str = "classic"  # RabbitMQ broker: classic (priorities) or quorum queues
    sweep_queue: str = "celery-agent.sweep"  # every worker also consumes this queue
    run_retention_days: float = 30.0  # finished runs older than this are deleted (0: keep all)
    gpu_wait: float = 300.0  # seconds a dynamic run waits for free GPUs before it fails
    gpu_lease_ttl: float = 60.0  # seconds a crashed worker's GPU lease survives
    gpu_sample_interval: float = 2.0  # seconds between samples of a run's GPU memory
    artifact_root: str | None = None  # fsspec URL runs' outputs go to (default: {home}/artifacts)
    artifact_wait: float = 2.0  # seconds a run's end waits for its upload; then in the background
    checkpoint_sync: float = 60.0  # seconds between syncs of a run's checkpoints (0: at its end)
    max_priority: int = 0  # the highest --priority a run may ask for (0: normal; 1: high)
    user_weights: tuple[str, ...] = ()  # fair-order weights, NAME=WEIGHT (default 1 each)
    quotas: tuple[str, ...] = ()  # user:NAME[@QUEUE]:runs=N, project:NAME[@QUEUE]:gpus=N
    fair_share: bool = True  # fair order and quotas at admission (false: FIFO, no quotas)
    fair_patience: float = 30.0  # seconds others wait for a user whose turn came but no run
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def runs_dir(self) -> Path:
        """Where each run's folder (log file, output, resolved params) lives."""
        return self.home / "runs"

    @property
    def git_cache(self) -> Path:
        """The clone cache: one clone per repo on this machine."""
        return self.home / "cache" / "git"

    @property
    def input_cache(self) -> Path:
        """Where the inputs runs read are kept, each downloaded once (:mod:`.inputcache`)."""
        return self.home / "cache" / "inputs"

    @property
    def env_cache(self) -> Path:
        """The environment cache root; each executor has a folder under it."""
        return self.home / "cache" / "envs"

    @property
    def env_cache_bytes(self) -> int | None:
        """The size bound of the environment cache in bytes (``env_cache_max_gb``, else the
        former ``max_env_gb``), None when unbounded."""
        gb = self.env_cache_max_gb if self.env_cache_max_gb is not None else self.max_env_gb
        return int(gb * 2**30) if gb else None

    @property
    def broker(self) -> str:
        """The broker URL in force."""
        return self.broker_url or self.redis_url

    @property
    def backend(self) -> str:
        """The result backend URL in force."""
        return self.result_backend or self.redis_url

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        config_file: Path | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Build settings from the layers; ``environ`` defaults to the process environment now."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        path = config_file or _config_path(environ)
        if path is not None:
            _layer(values, sources, _read_file(path), f"file {path}")
        _layer(values, sources, _from_env(environ), "environment")
        _layer(values, sources, dict(overrides or {}), "command line")
        return cls(**_coerce(values), sources=sources)

    def describe(self) -> list[tuple[str, Any, str]]:
        """(name, value, source) for every setting, for people."""
        return [
            (f.name, getattr(self, f.name), self.sources.get(f.name, "default"))
            for f in dataclasses.fields(self)
            if f.name != "sources"
        ]


_FIELDS = {f.name: f for f in dataclasses.fields(Settings) if f.name != "sources"}
_SPECIAL_ENV = {"CELERY_BROKER_URL": "broker_url", "CELERY_RESULT_BACKEND": "result_backend"}


def _config_path(environ: Mapping[str, str]) -> Path | None:
    explicit = environ.get(ENV_PREFIX + "CONFIG_FILE")
    if explicit:
        return Path(explicit)
    default = Path(environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "celery-agent.toml"
    return default if default.is_file() else None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist", "create it or unset CELERY_AGENT_CONFIG_FILE"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid TOML: {exc}", "fix the line it names"
        ) from None
    table = data.get("agent", data)
    unknown = sorted(set(table) - set(_FIELDS))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)}",
            f"known settings: {', '.join(sorted(_FIELDS))}",
        )
    return dict(table)


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _FIELDS:
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw not in (None, ""):
            out[name] = raw
    for var, name in _SPECIAL_ENV.items():
        if environ.get(var):
            out[name] = environ[var]
    return out


def _layer(
    values: dict[str, Any], sources: dict[str, str], layer: dict[str, Any], where: str
) -> None:
    for name, value in layer.items():
        if value is None:
            continue
        values[name] = value
        sources[name] = where


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in values.items():
        kind = str(_FIELDS[name].type)
        try:
            out[name] = _convert(kind, value)
        except ValueError:
            raise ConfigError(
                f"setting {name}={value!r} is not valid",
                f"it must be of type {kind}; set {ENV_PREFIX}{name.upper()} accordingly",
            ) from None
    return out


def _convert(kind: str, value: Any) -> Any:
    if kind.startswith("tuple"):
        return tuple(str(v) for v in value) if isinstance(value, (list, tuple)) else _words(value)
    if kind.startswith("Path"):
        return Path(value).expanduser()
    if kind.startswith("bool"):
        return value if isinstance(value, bool) else _parse_bool(str(value))
    if kind.startswith("int"):
        return int(value)
    if kind.startswith("float"):
        return float(value)
    return str(value)


def _words(text: Any) -> tuple[str, ...]:
    """A list setting given as text: items separated by spaces or commas."""
    return tuple(word for word in str(text).replace(",", " ").split() if word)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)
