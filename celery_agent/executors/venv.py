"""The venv executor: a cached virtualenv per (interpreter, requirements, index), built with uv or pip.

Most prepares are cache hits, so the key is cheap to recompute: a spec's requirement list is
normalized once per distinct list, a requirements.txt parsed once per content (memoized by its stat
stamp), and the key's JSON hashed once per distinct parts. Only the find-links folders are listed
on every call: a wheel rewritten in place changes no folder stamp.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from ..envcache import CachedEnv, EnvCache
from ..errors import EnvBuildError, ExecutorUnavailable
from ..filestamps import FileMemo, Stamp
from ..spec import TaskSpec
from . import indexes
from .base import Executor, PreparedEnv
from .indexes import IndexOptions, LinkListing, link_entry, link_listings, mask
from .interpreters import Interpreter, find_interpreter
from .steps import LogFn, Steps, clean_env

logger = logging.getLogger(__name__)

_INSTALL_HINT = "check the requirement names and versions, or the index"


@dataclass(frozen=True)
class Requirements:
    """What to install: normalized requirement lines, or a requirements file passed through."""

    lines: tuple[str, ...] = ()
    file: Path | None = None  #: a requirements file with options (-e, -r, --...) used as is
    file_sha256: str | None = None

    def __bool__(self) -> bool:
        return bool(self.lines) or self.file is not None


def read_requirements(spec: TaskSpec, source_dir: Path) -> Requirements:
    """The spec's requirements, else the repo's requirements.txt, else nothing."""
    if spec.requirements is not None:
        return _listed(tuple(spec.requirements))
    found = _REQUIREMENTS_FILES.get(os.path.join(source_dir, "requirements.txt"))
    return Requirements() if found is None else found


@functools.lru_cache(maxsize=256)
def _listed(lines: tuple[str, ...]) -> Requirements:
    """A spec's requirement list, normalized once per distinct list (specs repeat them)."""
    return Requirements(lines=normalize(lines))


def _parse_file(path: str, stamp: Stamp) -> Requirements:
    """A requirements.txt: normalized lines, or the file itself when it has options or paths."""
    if not stat.S_ISREG(stamp[0]):
        return Requirements()
    text = Path(path).read_text()
    lines = [_strip_comment(line) for line in text.splitlines()]
    lines = [line for line in lines if line]
    try:
        return Requirements(lines=normalize(lines))
    except InvalidRequirement:
        digest = hashlib.sha256(text.encode()).hexdigest()
        return Requirements(file=Path(path).resolve(), file_sha256=digest)


#: requirements.txt files by path, parsed again whenever the file's stamp changes
_REQUIREMENTS_FILES: FileMemo[Requirements] = FileMemo(_parse_file)


def _strip_comment(line: str) -> str:
    line = line.strip()
    if line.startswith("#"):
        return ""
    return line.split(" #", 1)[0].strip()


def normalize(lines: Iterable[str]) -> tuple[str, ...]:
    """Requirements with canonical names, sorted and deduplicated (order and case do not matter).

    Raises InvalidRequirement for a line that is not a plain requirement (an option, a path).
    """
    out = set()
    for line in lines:
        req = Requirement(line)
        req.name = canonicalize_name(req.name)
        req.extras = {canonicalize_name(extra) for extra in req.extras}
        out.add(str(req))
    return tuple(sorted(out))


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
        reqs = read_requirements(spec, source_dir)
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
        prepared.facts, prepared.lease = sources.record(), cached.lease
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


def _requirement_lines(reqs: Requirements) -> tuple[str, ...]:
    """The requirement lines, read from the file when they are kept as one."""
    if reqs.file is None:
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
    return {
        "executor": "venv",
        "python": python.path,
        "python_version": python.version,
        "installer": installer,
        "requirements": list(reqs.lines),
        "requirements_file": reqs.file_sha256,
        "find_links": [link_entry(link, listing) for link, listing in links],
    } | sources.key_parts()


def _label(python: Interpreter, reqs: Requirements) -> str:
    names = ", ".join(reqs.lines[:4]) + (" ..." if len(reqs.lines) > 4 else "")
    return f"python {python.short_version}: {names or ('requirements.txt' if reqs.file else '-')}"


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
        self.timeout = executor.settings.build_timeout
        self.bytecode = executor.settings.bytecode
        if self.bytecode not in BYTECODE:
            raise EnvBuildError(
                f"env_bytecode {self.bytecode!r} is unknown",
                f"set env_bytecode to one of {', '.join(BYTECODE)}",
            )

    def __call__(self, env_dir: Path) -> dict[str, Any]:
        env = clean_env() | {"UV_PYTHON_DOWNLOADS": "never", "UV_NO_PROGRESS": "1"}
        cwd = self.source_dir if self.source_dir.is_dir() else None
        self.steps = Steps(env, self.log, timeout=self.timeout, cwd=cwd)  # the clock starts now
        self.log(f"env: building venv with {self.installer} for python {self.python.short_version}")
        self.steps.run(self._create_argv(env_dir), "venv creation", "check the interpreter")
        if self.reqs:
            self.steps.run(self._install_argv(env_dir), f"{self.installer} install", _INSTALL_HINT)
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

    def _install_argv(self, env_dir: Path) -> list[str]:
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
        return head + self.sources.args() + self._requirement_args()

    def _requirement_args(self) -> list[str]:
        return ["-r", str(self.reqs.file)] if self.reqs.file else list(self.reqs.lines)

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
