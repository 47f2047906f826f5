"""The venv executor: a cached virtualenv per (interpreter, requirements, index), built with uv or pip.

What it holds comes from :func:`.envsource.resolve` (the spec's list or file, a lock file, a
pyproject.toml, the requirements.txt nearest the entry). Most prepares are cache hits, so the key
is cheap to recompute: a spec's requirement list is normalized once per distinct list, a file
parsed or hashed once per content (memoized by its stat stamp), and the key's JSON hashed once per
distinct parts. Only the find-links folders are listed on every call: a wheel rewritten in place
changes no folder stamp.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement

from ..envcache import CachedEnv, EnvCache
from ..errors import EnvBuildError, ExecutorUnavailable
from ..spec import TaskSpec
from . import indexes, lockfiles
from .base import Executor, PreparedEnv
from .envsource import EnvSource, resolve
from .indexes import IndexOptions, LinkListing, link_entry, link_listings, mask
from .interpreters import Interpreter, find_interpreter
from .reqfiles import normalize as normalize  # (its home before envsource)
from .steps import LogFn, Steps, clean_env

logger = logging.getLogger(__name__)

_INSTALL_HINT = "check the requirement names and versions, or the index"
_LOCK_HINT = "check that the lock file is current (lock it again) and its index is reachable"


#: what a venv is built from (see :mod:`.envsource`)
Requirements = EnvSource


def read_requirements(spec: TaskSpec, source_dir: Path, *, locks: bool = False) -> EnvSource:
    """The source of the spec's environment in the checkout at ``source_dir``; lock files are
    passed over unless ``locks``."""
    return resolve(spec, source_dir, locks=locks)


@functools.cache
def uv_binary() -> str | None:
    """The uv executable: the one shipped with the ``uv`` package, else ``uv`` on PATH (looked up once)."""
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def _has_virtualenv() -> bool:
    return importlib.util.find_spec("virtualenv") is not None


class VenvExecutor(Executor):
    """Runs a spec in a virtualenv built for its interpreter and requirements, cached by content."""

    name = "venv"

    def unavailable_reason(self) -> str | None:
        """None when the configured installer is present."""
        wanted = self.settings.installer
        if wanted == "uv" and uv_binary() is None:
            return "installer 'uv' is not installed (pip install uv)"
        if wanted == "pip" and not _has_virtualenv():
            return "installer 'pip' needs the virtualenv package (pip install virtualenv)"
        if uv_binary() is None and not _has_virtualenv():
            return "neither uv nor virtualenv is installed (pip install uv)"
        return None

    def installer(self) -> str:
        """The installer builds use: 'uv' or 'pip' (raises ExecutorUnavailable when missing)."""
        reason = self.unavailable_reason()
        if reason is not None:
            raise ExecutorUnavailable(f"venv executor: {reason}", "install it, or set installer")
        if self.settings.installer in ("uv", "pip"):
            return self.settings.installer
        return "uv" if uv_binary() is not None else "pip"

    def prepare(self, spec: TaskSpec, source_dir: Path, log: LogFn) -> PreparedEnv:
        """Reuse the cached venv for this spec, or build it (logging the installer's output)."""
        start = time.perf_counter()
        installer = self.installer()
        python = find_interpreter(spec.python, uv=uv_binary() if installer == "uv" else None)
        reqs = read_requirements(spec, source_dir, locks=True)
        _check_installer(reqs, installer)
        log(f"env: requirements from {reqs.describe()}")
        sources = self.sources(spec, reqs)
        if sources.torch_variant:
            log(
                f"env: torch from the {sources.torch_variant} wheel index {mask(sources.torch_index)}"
            )
        key = env_key(python, installer, reqs, sources, source_dir)
        build = _Build(self, installer, python, reqs, sources, source_dir, log)
        cache = self.env_cache()
        cached = cache.get_or_build(key, build, label=_label(python, reqs), hold=True)
        how = "reused" if cached.hit else "built"
        log(f"env: {how} venv {cached.key} ({cached.path}) in {cached.seconds:.3f}s")
        if not cached.hit:  # a rerun pinned to its frozen set finds this entry
            self._alias_frozen(cache, cached, spec, (python, installer), source_dir)
        prepared = _prepared(cached.path, cached.meta, cached.key, cached.hit, start, installer)
        prepared.facts = sources.record() | {"env_source": reqs.describe()}
        prepared.lease = cached.lease
        if reqs.pythonpath():
            prepared.env["PYTHONPATH"] = str(reqs.pythonpath())
        return prepared

    def _alias_frozen(
        self,
        cache: EnvCache,
        cached: CachedEnv,
        spec: TaskSpec,
        how: tuple[Interpreter, str],
        source_dir: Path,
    ) -> None:
        """Give the entry the key a spec listing its frozen set would have (what ``rerun``
        sends), so the rerun reuses this environment instead of building its twin."""
        pins = [line for line in cached.meta.get("freeze", []) if not line.startswith("-e")]
        try:
            frozen = Requirements(lines=normalize(pins))
        except InvalidRequirement:
            return
        sources = self.sources(spec, frozen)
        cache.alias(env_key(*how, frozen, sources, source_dir), cached.key)

    def sources(self, spec: TaskSpec, reqs: Requirements) -> IndexOptions:
        """Where this spec's packages come from on this worker (the torch index picked here)."""
        return indexes.resolve(spec, self.settings.indexes, _requirement_lines(reqs))


def _check_installer(reqs: EnvSource, installer: str) -> None:
    if installer != "uv" and (reqs.kind in ("uv.lock", "pylock.toml") or reqs.selection()):
        raise ExecutorUnavailable(
            f"{reqs.rel} is installed with uv, and this worker's installer is {installer}",
            "install uv on the worker (pip install uv) or set installer to auto",
        )


def _requirement_lines(reqs: Requirements) -> tuple[str, ...]:
    """The requirement lines, read from the file when they are kept as one (a lock's packages
    come from where the lock says: none of them asks for an index)."""
    if reqs.file is None or reqs.locked:
        return reqs.lines
    try:
        return tuple(reqs.file.read_text().splitlines())
    except OSError:
        return ()


def key_parts(
    python: Interpreter, installer: str, reqs: Requirements, sources: IndexOptions, source_dir: Path
) -> dict[str, Any]:
    """Everything that decides what a venv contains; its hash is the cache key."""
    links = link_listings(sources.find_links, source_dir)
    return _parts(python, installer, reqs, sources, links)


def env_key(
    python: Interpreter, installer: str, reqs: Requirements, sources: IndexOptions, source_dir: Path
) -> str:
    """``EnvCache.key(key_parts(...))``, with the JSON and its hash made once per distinct parts."""
    links = link_listings(sources.find_links, source_dir)
    return _hashed_key(python, installer, reqs, sources, links)


@functools.lru_cache(maxsize=256)
def _hashed_key(
    python: Interpreter,
    installer: str,
    reqs: Requirements,
    sources: IndexOptions,
    links: tuple[LinkListing, ...],
) -> str:
    return EnvCache.key(_parts(python, installer, reqs, sources, links))


def _parts(
    python: Interpreter,
    installer: str,
    reqs: Requirements,
    sources: IndexOptions,
    links: tuple[LinkListing, ...],
) -> dict[str, Any]:
    return (
        {
            "executor": "venv",
            "python": python.path,
            "python_version": python.version,
            "installer": installer,
            "requirements": list(reqs.lines),
            "requirements_file": None,
            "find_links": [link_entry(link, listing) for link, listing in links],
        }
        | sources.key_parts()
        | reqs.key_parts()
    )


def _label(python: Interpreter, reqs: Requirements) -> str:
    names = ", ".join(reqs.lines[:4]) + (" ..." if len(reqs.lines) > 4 else "")
    return f"python {python.short_version}: {names or (reqs.rel if reqs.file else '-')}"


def _prepared(
    env: Path, meta: dict[str, Any], key: str, hit: bool, start: float, installer: str
) -> PreparedEnv:
    bin_dir = os.path.join(env, "bin")
    return PreparedEnv(
        python=os.path.join(bin_dir, "python"),
        env={"VIRTUAL_ENV": str(env)},
        path_prefix=[bin_dir],
        freeze=list(meta.get("freeze", [])),
        cache_key=key,
        cache_hit=hit,
        seconds=time.perf_counter() - start,
        installer=installer,
    )


class _Build:
    """One venv build: create, install, freeze; called by the env cache with the final env path."""

    def __init__(
        self,
        executor: VenvExecutor,
        installer: str,
        python: Interpreter,
        reqs: Requirements,
        sources: IndexOptions,
        source_dir: Path,
        log: LogFn,
    ) -> None:
        self.installer, self.python, self.reqs, self.sources = installer, python, reqs, sources
        self.source_dir, self.log = Path(source_dir), log
        self.timeout, self.stop = executor.settings.build_timeout, executor.settings.stop
        self.bytecode = executor.settings.bytecode
        if self.bytecode not in BYTECODE:
            raise EnvBuildError(
                f"env_bytecode {self.bytecode!r} is unknown",
                f"set env_bytecode to one of {', '.join(BYTECODE)}",
            )

    def __call__(self, env_dir: Path) -> dict[str, Any]:
        env = clean_env() | {"UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
        if self.reqs.kind == "uv.lock":
            env["UV_PROJECT_ENVIRONMENT"] = str(env_dir)
        cwd = self.source_dir if self.source_dir.is_dir() else None
        self.steps = Steps(
            env, self.log, timeout=self.timeout, cwd=cwd, stop=self.stop
        )  # clock starts
        self.log(f"env: building venv with {self.installer} for python {self.python.short_version}")
        synced = self.reqs.kind == "uv.lock"  # uv sync makes the venv and knows what it holds
        if not synced:
            self.steps.run(self._create_argv(env_dir), "venv creation", "check the interpreter")
        if self.reqs:
            self._install(env_dir)
        if synced:
            freeze = lockfiles.installed(env_dir)
        else:
            freeze = self.steps.run(self._freeze_argv(env_dir), "freeze", _INSTALL_HINT, quiet=True)
        if self.reqs and self.bytecode == "background":
            compile_in_background(env_dir, env)
        return {
            "python": self.python.path,
            "python_version": self.python.version,
            "installer": self.installer,
            "requirements": list(self.reqs.lines),
            "freeze": sorted(line for line in freeze if _is_pin(line)),
        }

    def _install(self, env_dir: Path) -> None:
        """Install the source: a lock exactly as locked, else requirements through the installer."""
        kind, lock, scratch = self.reqs.kind, self.reqs.file, env_dir.parent / "source"
        if kind == "uv.lock" and lock is not None:
            argv = lockfiles.uv_sync_argv(_uv(), lock.parent, self.python.path)
            argv += self.reqs.selection()
            if self.bytecode != "build":
                argv.remove("--compile-bytecode")
            self.steps.run(argv, "uv sync --frozen", _LOCK_HINT)  # (UV_PROJECT_ENVIRONMENT set)
            return
        extra: list[str] = []
        if kind == "pylock.toml" and lock is not None:
            extra = ["--preview-features", "pylock", *self.reqs.selection(), "-r"]
            extra.append(str(lockfiles.pylock_file(lock, self.source_dir, scratch)))
        elif kind == "poetry.lock" and lock is not None:
            pins, folders = lockfiles.poetry_requirements(
                lock, scratch, self.reqs.extras, self.reqs.groups
            )
            if folders:
                self.log(f"env: poetry.lock folders left to sys.path: {', '.join(folders)}")
            extra = ["--no-deps", "-r", str(pins)]
        elif self.reqs.local:  # projects of the checkout: their code on sys.path, deps here
            copy = scratch / "requirements.txt"
            scratch.mkdir(parents=True, exist_ok=True)
            copy.write_text(self.reqs.requirements_text())
            names = ", ".join(p.name for p in self.reqs.local)
            self.log(f"env: {names} from the checkout go on sys.path; their dependencies here")
            extra = ["-r", str(copy)]
        argv = self._install_argv(env_dir, extra)
        self.steps.run(argv, f"{self.installer} install", _LOCK_HINT if extra else _INSTALL_HINT)

    # -- argv ---------------------------------------------------------------------------------------
    def _create_argv(self, env_dir: Path) -> list[str]:
        if self.installer == "uv":
            return [_uv(), "venv", "--no-config", "--python", self.python.path, str(env_dir)]
        return [
            sys.executable,
            "-m",
            "virtualenv",
            "--no-download",
            "--python",
            self.python.path,
            str(env_dir),
        ]

    def _install_argv(self, env_dir: Path, requirements: list[str] | None = None) -> list[str]:
        env_python = str(env_dir / "bin" / "python")
        if self.installer == "uv":
            head = [
                _uv(),
                "pip",
                "install",
                "--no-config",
                "--python",
                env_python,
                "--link-mode",
                "hardlink",  # files shared with uv's cache (a copy where the filesystem says no)
            ] + (["--compile-bytecode"] if self.bytecode == "build" else [])
        else:
            head = [env_python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
            head += [] if self.bytecode == "build" else ["--no-compile"]
        return head + self.sources.args() + (requirements or self._requirement_args())

    def _requirement_args(self) -> list[str]:
        if self.reqs.file is None:
            return list(self.reqs.lines)
        return [*self.reqs.selection(), "-r", str(self.reqs.file)]

    def _freeze_argv(self, env_dir: Path) -> list[str]:
        env_python = str(env_dir / "bin" / "python")
        if self.installer == "uv":
            return [_uv(), "pip", "freeze", "--quiet", "--no-config", "--python", env_python]
        return [env_python, "-m", "pip", "freeze", "--all", "--disable-pip-version-check"]


#: when the installed packages' bytecode is compiled: all of it at build time, in the background
#: while the first run starts, or by Python itself as each module is first imported
BYTECODE = ("build", "background", "import")


def compile_in_background(env_dir: Path, env: dict[str, str]) -> None:
    """Compile the env's site-packages in a process of its own, not waited for: the run starts
    meanwhile and compiles what it imports itself (both write .pyc files atomically)."""
    python = str(env_dir / "bin" / "python")
    argv = [python, "-m", "compileall", "-q", "-j", "0", *map(str, env_dir.glob("lib/python*"))]
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    threading.Thread(target=proc.wait, name="ca-compileall", daemon=True).start()


def _is_pin(line: str) -> bool:
    """A freeze line naming an installed package ('name==1.0', 'name @ url', '-e path')."""
    return "==" in line or " @ " in line or line.startswith("-e ")


def _uv() -> str:
    found = uv_binary()
    if found is None:
        raise ExecutorUnavailable("uv is not installed", "pip install uv, or set installer to pip")
    return found
