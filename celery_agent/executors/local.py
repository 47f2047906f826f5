"""The local executor: run with an interpreter that already exists, building and installing nothing."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from ..errors import EnvBuildError
from ..spec import TaskSpec
from .base import Executor, PreparedEnv
from .envsource import resolve
from .interpreters import find_interpreter
from .steps import LogFn

logger = logging.getLogger(__name__)


class LocalExecutor(Executor):
    """Runs a spec with the worker's own interpreter, or the one ``spec.python`` names."""

    name = "local"

    def prepare(self, spec: TaskSpec, source_dir: Path, log: LogFn) -> PreparedEnv:
        """Check the spec needs no installs and pick its interpreter."""
        start = time.perf_counter()
        if spec.requirements:
            raise EnvBuildError(
                f"the local executor installs nothing, but the spec requires {', '.join(spec.requirements)}",
                "use the venv executor (executor='venv') to install requirements",
            )
        if spec.requirements_file:
            raise EnvBuildError(
                f"the local executor installs nothing, but the spec names {spec.requirements_file}",
                "use the venv executor (executor='venv') to install requirements",
            )
        found = resolve(spec, source_dir) if spec.requirements is None else None
        if found:
            log(
                f"env: local executor: {found.describe()} is not installed (the venv executor would)"
            )
        python = _interpreter(spec.python)
        log(f"env: local interpreter {python}")
        venv = _venv_of(python)
        return PreparedEnv(
            python=python,
            env={"VIRTUAL_ENV": str(venv)} if venv else {},
            path_prefix=[str(venv / "bin")] if venv else [],
            seconds=time.perf_counter() - start,
            installer="none",
        )


def _interpreter(wanted: str | None) -> str:
    """The worker's own interpreter by default (its venv, so a controller run can import the agent);
    an absolute path is used as given (a venv's python must keep its venv path)."""
    if wanted is None:
        return sys.executable
    if os.path.isabs(wanted):
        find_interpreter(wanted)  # raises when it does not run
        return wanted
    return find_interpreter(wanted).path


def _venv_of(python: str) -> Path | None:
    """The virtualenv an interpreter path belongs to, if any (``<venv>/bin/python``)."""
    root = Path(python).parent.parent
    return root if (root / "pyvenv.cfg").is_file() else None
