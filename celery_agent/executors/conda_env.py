"""One conda env build: conda packages (py-rattler in a child, or a conda tool), pip, activation.

Called by the env cache with the final prefix path; returns the metadata stored with the entry
(installed packages, pip freeze, activation variables), so a cache hit needs no tool at all.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import EnvBuildError
from ..spec import TaskSpec
from . import conda_build
from .conda_inputs import CondaInput, current_platform, rattler_module
from .indexes import plain
from .steps import LogFn, Steps, clean_env
from .venv import uv_binary

logger = logging.getLogger(__name__)

#: seconds a whole conda build may take when the worker sets no build timeout
DEFAULT_BUILD_TIMEOUT = 3600.0
#: conda tools used instead of py-rattler when asked for (or found, with tool='auto')
TOOLS = ("micromamba", "mamba", "conda")
_PATH_MARK = "/celery-agent-path-mark"
_SHELL_VARS = frozenset(("PWD", "OLDPWD", "SHLVL", "_", "PATH"))


def find_tool(wanted: str) -> tuple[str, str | None]:
    """(tool name, executable): 'rattler' needs none; 'auto' picks the first tool on PATH."""
    if wanted == "rattler":
        return "rattler", None
    names = TOOLS if wanted == "auto" else (wanted,)
    for name in names:
        found = shutil.which(name, path=os.environ.get("PATH"))
        if found:
            return name, found
    if wanted == "auto":
        return "rattler", None
    raise EnvBuildError(
        f"conda tool {wanted!r} is not on this worker's PATH",
        "install it on the worker, or set conda tool to 'rattler' (no conda install needed)",
    )


class CondaBuild:
    """Builds one prefix: conda packages, then pip requirements, then records what it holds."""

    def __init__(
        self,
        inp: CondaInput,
        tool: tuple[str, str | None],
        spec: TaskSpec,
        source_dir: Path,
        *,
        cache_dir: Path,
        timeout: float | None,
        installer: str,
        log: LogFn,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        self.inp, self.tool, self.spec, self.log, self.stop = inp, tool, spec, log, stop
        self.source_dir, self.cache_dir, self.installer = Path(source_dir), cache_dir, installer
        self.timeout = timeout if timeout is not None else DEFAULT_BUILD_TIMEOUT

    def __call__(self, prefix: Path) -> dict[str, Any]:
        cwd = self.source_dir if self.source_dir.is_dir() else None
        self.steps = Steps(clean_env(), self.log, timeout=self.timeout, cwd=cwd, stop=self.stop)
        self.log(f"env: building conda env from {self.inp.source} with {self._tool_name()}")
        if self.inp.kind == "solve" and self.tool[1] is not None:
            self.steps.run(self._tool_argv(prefix, self.tool[1]), f"{self.tool[0]} create", _HINT)
        else:
            self._rattler(prefix)
        python = env_python(prefix)
        pip_freeze = self._pip(prefix, python) if self.inp.pip else []
        packages = installed_packages(prefix)
        return {
            "source": self.inp.source,
            "tool": self._tool_name(),
            "python": python,
            "packages": packages,
            "freeze": sorted({f"{p['name']}=={p['version']}" for p in packages} | set(pip_freeze)),
            "activation": activation(prefix),
        }

    def _tool_name(self) -> str:
        return self.tool[0] if self.inp.kind == "solve" else "rattler"

    # -- conda packages -----------------------------------------------------------------------
    def _tool_argv(self, prefix: Path, exe: str) -> list[str]:
        channels = [arg for ch in self.inp.channels for arg in ("-c", ch)]
        head = [exe, "create", "--yes", "--prefix", str(prefix), "--override-channels"]
        return head + channels + list(self.inp.specs)

    def _rattler(self, prefix: Path) -> None:
        request = self._request(prefix)
        request_path = prefix.parent / "conda-request.json"
        request_path.write_text(json.dumps(request, indent=1))
        argv = [sys.executable, str(Path(conda_build.__file__)), str(request_path)]
        try:
            self.steps.run(argv, "conda install (py-rattler)", _HINT)
        except EnvBuildError as exc:
            raise _child_error(Path(request["error"]), exc) from None

    def _request(self, prefix: Path) -> dict[str, Any]:
        inp = self.inp
        return {
            "kind": inp.kind,
            "prefix": str(prefix),
            "cache_dir": str(self.cache_dir),
            "error": str(prefix.parent / "conda-error.json"),
            "platform": current_platform(),
            "timeout": self.timeout,
            "specs": list(inp.specs),
            "channels": list(inp.channels),
            "lock": str(inp.lock) if inp.lock else None,
            "environment": "default",
            "records": list(inp.records),
        }

    # -- pip ----------------------------------------------------------------------------------
    def _pip(self, prefix: Path, python: str | None) -> list[str]:
        if python is None:
            raise EnvBuildError(
                f"pip requirements ({', '.join(self.inp.pip)}) need python in the conda env",
                "add python (and pip, without uv) to the conda specs",
            )
        uv = uv_binary() if self.installer != "pip" else None
        if uv is not None:
            head = [uv, "pip", "install", "--no-config", "--python", python, "--compile-bytecode"]
            freeze = [uv, "pip", "freeze", "--quiet", "--no-config", "--python", python]
        else:
            head = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
            freeze = [python, "-m", "pip", "freeze", "--disable-pip-version-check"]
        reqs = prefix.parent / "pip-requirements.txt"  # option lines (--find-links, -e) work too
        reqs.write_text("\n".join(self.inp.pip) + "\n")
        self.steps.run(head + plain(self.spec).args() + ["-r", str(reqs)], "pip install", _PIP_HINT)
        lines = self.steps.run(freeze, "pip freeze", _PIP_HINT, quiet=True)
        return [line for line in lines if "==" in line or " @ " in line]


_HINT = "check the conda specs, channels and lock file"
_PIP_HINT = "check the pip requirements of the conda env, or the index"


def _child_error(path: Path, fallback: EnvBuildError) -> EnvBuildError:
    """The child's own error (message and hint), else the step's (exit code and output tail)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return fallback
    return EnvBuildError(record["message"], record.get("hint"))


def env_python(prefix: Path) -> str | None:
    """The env's python interpreter (bin/python), or None when the env has none."""
    python = prefix / "bin" / "python"
    return str(python) if python.exists() else None


def installed_packages(prefix: Path) -> list[dict[str, str]]:
    """The conda packages in a prefix, from its conda-meta records, sorted by name."""
    out = []
    for path in sorted((prefix / "conda-meta").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        keys = ("name", "version", "build", "channel")
        out.append({key: str(record.get(key) or "") for key in keys})
    return sorted(out, key=lambda p: p["name"])


# -- activation -----------------------------------------------------------------------------------
def activation(prefix: Path) -> dict[str, Any]:
    """What activating the prefix sets: {'env': variables, 'path': dirs to put first on PATH}.

    py-rattler writes the activation script (CONDA_PREFIX, PATH, the packages' activate.d
    scripts); bash runs it once here, at build time, and the result is stored with the env.
    """
    rattler_module()  # raises with the install hint when py-rattler is missing
    from rattler.shell import ActivationVariables, Shell, activate

    script = activate(prefix, ActivationVariables(None, [_PATH_MARK]), Shell.bash).script
    found = _run_activation(script)
    if found is None:
        found = {"CONDA_PREFIX": str(prefix), "PATH": f"{prefix / 'bin'}:{_PATH_MARK}"}
    path = found.get("PATH", "").split(os.pathsep)
    prefix_dirs = path[: path.index(_PATH_MARK)] if _PATH_MARK in path else [str(prefix / "bin")]
    env = {k: v for k, v in found.items() if k not in _SHELL_VARS}
    env.setdefault("CONDA_DEFAULT_ENV", str(prefix))
    return {"env": env, "path": prefix_dirs}


def _run_activation(script: str) -> dict[str, str] | None:
    bash, env_exe = shutil.which("bash"), shutil.which("env")
    if bash is None or env_exe is None:
        return None
    argv = [bash, "--norc", "--noprofile", "-c", f"{script}\n{shlex.quote(env_exe)} -0"]
    path = os.pathsep.join([_PATH_MARK, os.environ.get("PATH", os.defpath)])
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/")}
    try:
        done = subprocess.run(argv, capture_output=True, env=env, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("conda activation script failed: %s", exc)
        return None
    pairs = (item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    return {key: value for key, value in pairs if key not in ("HOME",)}
