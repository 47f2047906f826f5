"""The executor contract: prepare an environment for a spec, then say how to start a command in it."""

from __future__ import annotations

import dataclasses
import functools
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..envcache import EnvCache
from ..envusers import Lease
from ..runner import LineSink, ProcessOutcome, run_process
from ..spec import TaskSpec
from .indexes import IndexDefaults
from .steps import LogFn

logger = logging.getLogger(__name__)


@dataclass
class ExecutorSettings:
    """What a worker tells its executors: where envs live, which installer, cache limits."""

    cache_root: Path  #: envs go under cache_root / <executor name>
    installer: str = "auto"  #: "auto" (uv when found, else pip), "uv" or "pip"
    max_envs: int = 20
    max_env_bytes: int | None = None
    failure_ttl: float = 600.0
    build_timeout: float | None = None  #: seconds; over it the build raises StageTimeout
    indexes: IndexDefaults = field(default_factory=IndexDefaults)  #: mirror, torch index
    bytecode: str = "import"  #: when installed packages are compiled: import, background, build

    #: asked every tenth of a second while a build step runs: True ends the step (a cancel)
    stop: Callable[[], bool] | None = None
    #: told each env cache outcome: observe(executor name, "hit" | "built" | "failed", seconds)
    observe: Callable[[str, str, float], None] | None = None

    def within(
        self,
        seconds: float | None,
        stop: Callable[[], bool] | None = None,
        observe: Callable[[str, str, float], None] | None = None,
    ) -> ExecutorSettings:
        """These settings with builds limited to ``seconds`` as well (None: no further limit),
        ended when ``stop`` says so, and their cache outcomes told to ``observe``."""
        settings = self if stop is None else dataclasses.replace(self, stop=stop)
        if observe is not None:
            settings = dataclasses.replace(settings, observe=observe)
        if seconds is None or (self.build_timeout is not None and self.build_timeout <= seconds):
            return settings
        return dataclasses.replace(settings, build_timeout=seconds)


@dataclass
class RunRequest:
    """How to run a prepared command: where, with what environment, and its limits."""

    env: dict[str, str]  #: the run's full environment
    cwd: Path  #: working directory (inside the checkout)
    sink: LineSink  #: receives batches of output lines
    log_file: Path | None = None
    timeout: float | None = None
    grace: float = 10.0
    should_abort: Callable[[], bool] | None = None
    poll_interval: float = 0.2
    source_dir: Path | None = None  #: the checkout root (mounted by container executors)
    output_dir: Path | None = None  #: the run's output folder (mounted by container executors)
    labels: dict[str, str] = field(default_factory=dict)  #: run id, worker, queue
    gpus: list[str] = field(default_factory=list)  #: GPU ids (UUIDs or indices) the run may use
    #: applied to every output line before the log file, the sink and the tail (secret values)
    scrub: Callable[[list[str]], list[str]] | None = None
    #: receives the lines still waiting when the output ends, instead of ``sink`` (the run's end
    #: record carries them: one round trip fewer for a short run)
    sink_last: LineSink | None = None


@dataclass
class PreparedEnv:
    """An environment ready to run a spec's command."""

    python: str  #: absolute path of the interpreter the run uses
    env: dict[str, str] = field(default_factory=dict)  #: variables to set for the run
    path_prefix: list[str] = field(default_factory=list)  #: dirs to put first on PATH
    freeze: list[str] = field(default_factory=list)  #: "name==version" lines, sorted
    cache_key: str | None = None
    cache_hit: bool = False
    seconds: float = 0.0  #: time prepare() took
    installer: str = "none"  #: "uv", "pip" or "none"
    facts: dict[str, Any] = field(default_factory=dict)  #: more for the run's record (torch index)
    #: the cache entry's lease (see :mod:`..envusers`), given back when the run ends
    lease: Lease | None = field(default=None, repr=False, compare=False)

    def record(self) -> dict[str, Any]:
        """What the run's record keeps of its environment."""
        return {"env_key": self.cache_key, "env_hit": self.cache_hit, "freeze": self.freeze} | (
            self.facts
        )


class Executor(ABC):
    """Prepares the environment a run executes in (a venv, the worker's interpreter, a container)."""

    name: ClassVar[str]

    def __init__(self, settings: ExecutorSettings) -> None:
        self.settings = settings

    def unavailable_reason(self) -> str | None:
        """None when this executor can run here, else a sentence saying what is missing."""
        return None

    @abstractmethod
    def prepare(self, spec: TaskSpec, source_dir: Path, log: LogFn) -> PreparedEnv:
        """Build or reuse the environment for ``spec`` with its code checked out at ``source_dir``."""

    def command(self, prepared: PreparedEnv, argv: Sequence[str]) -> list[str]:
        """The full argv of a run: the prepared interpreter, then ``argv``."""
        return [prepared.python, *argv]

    def run(self, prepared: PreparedEnv, argv: Sequence[str], job: RunRequest) -> ProcessOutcome:
        """Run ``argv`` (interpreter arguments) in the prepared environment and supervise it.

        The default spawns a local process group; an executor that runs elsewhere (a container)
        overrides this and honours the same request: log sink, timeout, grace and abort check.
        The environment's lease is given back when the run ends.
        """
        try:
            return self._run_here(prepared, argv, job)
        finally:
            if prepared.lease is not None:
                prepared.lease.release()

    def _run_here(
        self, prepared: PreparedEnv, argv: Sequence[str], job: RunRequest
    ) -> ProcessOutcome:
        return run_process(
            self.command(prepared, argv),
            env=job.env,
            cwd=job.cwd,
            sink=job.sink,
            log_file=job.log_file,
            timeout=job.timeout,
            grace=job.grace,
            should_abort=job.should_abort,
            poll_interval=job.poll_interval,
            scrub=job.scrub,
            sink_last=job.sink_last,
        )

    def env_cache(self) -> EnvCache:
        """This executor's cache of built environments, under ``cache_root / name``."""
        s = self.settings
        return EnvCache(
            Path(s.cache_root) / self.name,
            max_entries=s.max_envs,
            max_bytes=s.max_env_bytes,
            failure_ttl=s.failure_ttl,
            stop=s.stop,
            observe=None if s.observe is None else functools.partial(s.observe, self.name),
        )
