"""What a conda env holds: specs and channels (environment.yml or inline) or a lock file's packages.

Lock files install exactly their packages, without a solve:

- ``pixi.lock`` is read with py-rattler's ``LockFile``;
- ``conda-lock.yml`` (conda-lock's unified format, version 1) is parsed here from its documented
  YAML layout: ``metadata.platforms`` and a ``package`` list of ``{name, version, manager,
  platform, url, hash: {md5, sha256}, dependencies}``. The build string and subdir come from the
  package URL (``<channel>/<subdir>/<name>-<version>-<build>.conda``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EnvBuildError
from ..spec import CondaOptions

logger = logging.getLogger(__name__)

DEFAULT_CHANNELS = ("conda-forge",)
_LOCK_HINT = "re-create the lock file (pixi lock, or conda-lock -f environment.yml)"


@dataclass(frozen=True)
class CondaInput:
    """One conda environment to build: solved from specs, or installed from locked packages."""

    kind: str  #: "solve", "pixi" (a pixi.lock) or "records" (a conda-lock.yml's packages)
    source: str  #: what it came from, for people: 'environment.yml', 'inline specs', a lock path
    specs: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    pip: tuple[str, ...] = ()  #: pip requirements installed after the conda packages
    lock: Path | None = None
    records: tuple[dict[str, Any], ...] = ()  #: locked conda packages (url, hashes, build, ...)
    locked: tuple[str, ...] = ()  #: 'url#hash' of every locked package: the cache key's core


def rattler_module() -> Any:
    """py-rattler, imported on first use (raises EnvBuildError naming the extra when missing)."""
    try:
        import rattler
    except ImportError:
        raise EnvBuildError(
            "the conda executor needs py-rattler", "pip install 'celery-agent[conda]'"
        ) from None
    return rattler


def current_platform() -> str:
    """This worker's conda platform, like 'linux-64'."""
    return str(rattler_module().Subdir.current())


def read_input(options: CondaOptions, source_dir: Path, platform: str) -> CondaInput:
    """The environment the options describe, read from the checkout at ``source_dir``."""
    if options.lock:
        return _read_lock(_repo_file(source_dir, options.lock, "lock file"), platform, options)
    if options.file:
        return _read_env_file(_repo_file(source_dir, options.file, "environment file"), options)
    channels = tuple(options.channels) or DEFAULT_CHANNELS
    specs = normalize_specs(options.specs)
    return CondaInput("solve", "inline specs", specs, channels, tuple(options.pip))


def _repo_file(source_dir: Path, rel: str, what: str) -> Path:
    path = Path(source_dir) / rel
    if not path.is_file():
        raise EnvBuildError(
            f"the {what} {rel!r} is not in the checkout", "commit it, or fix the path in conda"
        )
    return path


def normalize_specs(specs: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Match specs in rattler's canonical spelling, sorted and deduplicated."""
    match_spec = rattler_module().MatchSpec
    out = set()
    for spec in specs:
        try:
            out.add(str(match_spec(spec.strip())))
        except Exception as exc:
            raise EnvBuildError(
                f"conda spec {spec!r} is not valid: {exc}",
                "write specs like 'numpy>=1.26' or 'python 3.11.*'",
            ) from None
    return tuple(sorted(out))


# -- environment.yml ------------------------------------------------------------------------------
def _read_env_file(path: Path, options: CondaOptions) -> CondaInput:
    data = load_yaml(path)
    deps = data.get("dependencies") or []
    if not isinstance(deps, list):
        raise _malformed(path, "'dependencies' must be a list")
    specs, pip = _split_dependencies(path, deps)
    channels = tuple(_channel(path, ch) for ch in _channels(path, data) if ch != "nodefaults")
    return CondaInput(
        "solve",
        path.name,
        normalize_specs(specs),
        channels or DEFAULT_CHANNELS,
        tuple(pip) + tuple(options.pip),
    )


def _split_dependencies(path: Path, deps: list[Any]) -> tuple[list[str], list[str]]:
    specs: list[str] = []
    pip: list[str] = []
    for dep in deps:
        if isinstance(dep, str):
            specs.append(dep)
        elif isinstance(dep, dict) and set(dep) == {"pip"} and isinstance(dep["pip"], list):
            pip += [str(line) for line in dep["pip"]]
        else:
            raise _malformed(path, f"dependency {dep!r} is neither a spec nor a 'pip:' list")
    return specs, pip


def _channels(path: Path, data: dict[str, Any]) -> list[str]:
    channels = data.get("channels") or []
    if not isinstance(channels, list) or not all(isinstance(ch, str) for ch in channels):
        raise _malformed(path, "'channels' must be a list of names or URLs")
    return channels


def _channel(path: Path, channel: str) -> str:
    """A channel as given; a relative folder ('./channel') becomes a file:// URL."""
    if channel.startswith(("./", "../")):
        return (path.parent / channel).resolve().as_uri()
    return channel


def load_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; EnvBuildError naming the line when it does not parse."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise _malformed(path, f"it is not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise _malformed(path, "it must be a YAML mapping")
    return data


def _malformed(path: Path, why: str) -> EnvBuildError:
    return EnvBuildError(
        f"{path.name} is malformed: {why}", "fix the file (see the conda environment file format)"
    )


# -- lock files -----------------------------------------------------------------------------------
def _read_lock(path: Path, platform: str, options: CondaOptions) -> CondaInput:
    data = load_yaml(path)
    if "package" in data and "metadata" in data:
        return _read_conda_lock(path, data, platform, options)
    if "environments" in data:
        return _read_pixi_lock(path, platform, options)
    raise _malformed(path, "it is neither a conda-lock.yml nor a pixi.lock")


def _no_platform(path: Path, platform: str, locked: list[str]) -> EnvBuildError:
    return EnvBuildError(
        f"the lock file {path.name} has no packages for this worker's platform {platform} "
        f"(it locks {', '.join(sorted(locked)) or 'none'})",
        f"lock it for {platform} too ({_LOCK_HINT} with that platform)",
    )


def _read_conda_lock(
    path: Path, data: dict[str, Any], platform: str, options: CondaOptions
) -> CondaInput:
    packages = data.get("package")
    if data.get("version") != 1 or not isinstance(packages, list):
        raise _malformed(path, "a conda-lock.yml needs 'version: 1' and a 'package' list")
    mine = [p for p in packages if isinstance(p, dict) and p.get("platform") == platform]
    if not any(p.get("manager") == "conda" for p in mine):
        platforms = (data.get("metadata") or {}).get("platforms") or []
        raise _no_platform(path, platform, [str(p) for p in platforms])
    records = tuple(_conda_lock_record(path, p) for p in mine if p.get("manager") == "conda")
    pip = tuple(f"{p['name']} @ {p['url']}" for p in mine if p.get("manager") == "pip")
    locked = tuple(sorted(f"{r['url']}#{r['sha256'] or r['md5']}" for r in records))
    return CondaInput(
        "records", path.name, records=records, pip=pip + tuple(options.pip), locked=locked
    )


def _conda_lock_record(path: Path, entry: dict[str, Any]) -> dict[str, Any]:
    try:
        url, name, version = str(entry["url"]), str(entry["name"]), str(entry["version"])
        hashes = entry.get("hash") or {}
        deps = entry.get("dependencies") or {}
    except KeyError as exc:
        raise _malformed(path, f"a package has no {exc.args[0]!r}") from None
    channel_url, subdir, file_name = url.rsplit("/", 2)
    stem = file_name.removesuffix(".conda").removesuffix(".tar.bz2")
    return {
        "name": name,
        "version": version,
        "build": stem.removeprefix(f"{name}-{version}-"),
        "subdir": subdir,
        "url": url,
        "channel": channel_url,
        "md5": hashes.get("md5"),
        "sha256": hashes.get("sha256"),
        "depends": [f"{dep} {spec}".strip() for dep, spec in deps.items()],
    }


def _read_pixi_lock(path: Path, platform: str, options: CondaOptions) -> CondaInput:
    rattler = rattler_module()
    try:
        env = rattler.LockFile.from_path(path).default_environment()
    except Exception as exc:
        raise _malformed(path, f"py-rattler cannot read it: {exc}") from None
    if env is None:
        raise _malformed(path, "it has no 'default' environment")
    packages = env.packages_by_platform()
    mine = next((pkgs for plat, pkgs in packages.items() if plat.name == platform), None)
    if not mine:
        raise _no_platform(path, platform, [plat.name for plat in packages])
    locked = tuple(sorted(_locked_line(p) for p in mine))
    pip = tuple(_pypi_line(p) for p in mine if isinstance(p, rattler.PypiLockedPackage))
    return CondaInput("pixi", path.name, lock=path, pip=pip + tuple(options.pip), locked=locked)


def _locked_line(package: Any) -> str:
    hashes = package.hashes
    digest = (hashes.sha256 or hashes.md5 or b"").hex() if hashes is not None else ""
    return f"{package.location}#{digest}"


def _pypi_line(package: Any) -> str:
    location = str(package.location)
    return (
        f"{package.name} @ {location}"
        if "://" in location
        else f"{package.name}=={package.version}"
    )


# -- the cache key --------------------------------------------------------------------------------
def key_parts(inp: CondaInput, platform: str, tool: str) -> dict[str, Any]:
    """Everything that decides what the env holds: locked hashes, or specs, channels and platform."""
    parts: dict[str, Any] = {
        "executor": "conda",
        "platform": platform,
        "tool": tool,
        "kind": inp.kind,
        "pip": sorted(inp.pip),
    }
    if inp.kind == "solve":
        parts |= {
            "specs": list(inp.specs),
            "channels": [_channel_fingerprint(ch, platform) for ch in inp.channels],
            "virtual_packages": virtual_packages(),
        }
    else:
        parts["locked"] = list(inp.locked)
    return parts


def _channel_fingerprint(channel: str, platform: str) -> str:
    """A channel; a local one with a hash of its index, so re-indexing it changes the key."""
    if not channel.startswith(("file://", "/")):
        return channel
    folder = Path(channel.removeprefix("file://"))
    digest = hashlib.sha256()
    for subdir in (platform, "noarch"):
        index = folder / subdir / "repodata.json"
        if index.is_file():
            digest.update(index.read_bytes())
    return f"{channel}#{digest.hexdigest()[:16]}"


@functools.cache
def virtual_packages() -> tuple[str, ...]:
    """This machine's virtual packages (__glibc, __cuda, ...), as 'name=version', once per process."""
    detected = rattler_module().VirtualPackage.detect()
    out = []
    for package in detected:
        generic = package.into_generic()
        name = generic.name.normalized
        if name != "__archspec":
            out.append(f"{name}={generic.version}")
    return tuple(sorted(out))
