"""A local conda channel made on the spot: small packages in .tar.bz2 format, indexed by py-rattler.

No conda channel is reachable from the tests, and a real python interpreter cannot come from one
here, so the channel's ``python`` package is a venv-style shim: ``bin/python`` is a symlink to the
test interpreter's base executable and ``pyvenv.cfg`` points at its home, so the env's python has
the env's own site-packages (where noarch python packages land).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

BASE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
PY_VERSION = ".".join(str(n) for n in sys.version_info[:3])
PY_MINOR = ".".join(str(n) for n in sys.version_info[:2])


@dataclass
class Entry:
    """One file of a package: its bytes and mode, or a symlink target."""

    data: bytes = b""
    mode: int = 0o644
    link: str | None = None


@dataclass
class Package:
    """A conda package to write into the channel."""

    name: str
    version: str
    files: dict[str, Entry] = field(default_factory=dict)
    depends: list[str] = field(default_factory=list)
    subdir: str = "noarch"
    noarch: str | None = "generic"
    build: str = "0"

    @property
    def file_name(self) -> str:
        return f"{self.name}-{self.version}-{self.build}.tar.bz2"


def current_subdir() -> str:
    """This machine's conda platform, like 'linux-64'."""
    import rattler

    return str(rattler.Subdir.current())


def write_package(channel: Path, pkg: Package) -> Path:
    """Write ``pkg`` as a .tar.bz2 conda package under ``channel/<subdir>/``."""
    folder = channel / pkg.subdir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / pkg.file_name
    paths = []
    with tarfile.open(path, "w:bz2") as tar:
        for rel, entry in sorted(pkg.files.items()):
            _add(tar, rel, entry)
            paths.append(_paths_entry(rel, entry))
        _add(tar, "info/index.json", Entry(json.dumps(_index(pkg)).encode()))
        _add(
            tar, "info/paths.json", Entry(json.dumps({"paths": paths, "paths_version": 1}).encode())
        )
    return path


def _add(tar: tarfile.TarFile, rel: str, entry: Entry) -> None:
    info = tarfile.TarInfo(rel)
    info.mtime, info.mode = 1_700_000_000, entry.mode
    if entry.link is not None:
        info.type, info.linkname = tarfile.SYMTYPE, entry.link
        tar.addfile(info)
        return
    info.size = len(entry.data)
    tar.addfile(info, io.BytesIO(entry.data))


def _paths_entry(rel: str, entry: Entry) -> dict[str, object]:
    if entry.link is not None:
        return {"_path": rel, "path_type": "softlink"}
    digest = hashlib.sha256(entry.data).hexdigest()
    return {
        "_path": rel,
        "path_type": "hardlink",
        "sha256": digest,
        "size_in_bytes": len(entry.data),
    }


def _index(pkg: Package) -> dict[str, object]:
    index: dict[str, object] = {
        "name": pkg.name,
        "version": pkg.version,
        "build": pkg.build,
        "build_number": 0,
        "depends": pkg.depends,
        "subdir": pkg.subdir,
        "timestamp": 1_700_000_000_000,
    }
    if pkg.subdir == "noarch" and pkg.noarch:
        index["noarch"] = pkg.noarch
    return index


def index_channel(channel: Path) -> None:
    """Write repodata.json for every subdir of ``channel`` with py-rattler's indexer."""
    from rattler.index import index_fs

    (channel / "noarch").mkdir(parents=True, exist_ok=True)
    asyncio.run(index_fs(channel, write_zst=False, write_shards=False, force=True))


# -- the packages the tests use -------------------------------------------------------------------
def python_shim() -> Package:
    """'python' at the test interpreter's version: a venv-style link to its base interpreter."""
    home = os.path.dirname(BASE_PYTHON)
    cfg = f"home = {home}\ninclude-system-site-packages = false\nversion = {PY_VERSION}\n"
    files = {
        "bin/python": Entry(link=BASE_PYTHON),
        f"bin/python{PY_MINOR}": Entry(link="python"),
        "pyvenv.cfg": Entry(cfg.encode()),
        f"lib/python{PY_MINOR}/site-packages/.keep": Entry(b""),
    }
    return Package("python", PY_VERSION, files, subdir=current_subdir(), noarch=None)


def tool(name: str, version: str, depends: tuple[str, ...] = ()) -> Package:
    """A noarch generic package shipping ``bin/<name>``, a script that prints its version."""
    script = f'#!/bin/sh\necho {name} {version} "$@"\n'.encode()
    return Package(name, version, {f"bin/{name}": Entry(script, 0o755)}, list(depends))


def module(name: str, version: str) -> Package:
    """A noarch python package with module ``name`` (``VERSION = '<version>'``) in site-packages
    and an activate.d script setting ``<NAME>_HOME``."""
    code = f"VERSION = {version!r}\n".encode()
    hook = f'export {name.upper()}_HOME="$CONDA_PREFIX/share/{name}"\n'.encode()
    files = {
        f"site-packages/{name}/__init__.py": Entry(code),
        f"etc/conda/activate.d/{name}.sh": Entry(hook),
    }
    return Package(name, version, files, ["python"], noarch="python")


def make_channel(folder: Path) -> Path:
    """A channel with python (shim), catool 1.0 and 2.0, camod 0.1 (a module), and a conflicting
    pair: caleft needs catool <2, caright needs catool >=2. Returns the channel folder."""
    packages = [
        python_shim(),
        tool("catool", "1.0"),
        tool("catool", "2.0"),
        tool("caleft", "1.0", ("catool <2",)),
        tool("caright", "1.0", ("catool >=2",)),
        module("camod", "0.1"),
    ]
    for pkg in packages:
        write_package(folder, pkg)
    index_channel(folder)
    return folder


def write_pixi_lock(path: Path, channel: Path, specs: list[str]) -> Path:
    """Solve ``specs`` from ``channel`` with py-rattler and write the result as a pixi.lock."""
    import rattler

    subdir = current_subdir()
    records = asyncio.run(rattler.solve([channel.as_uri()], specs, platforms=[subdir, "noarch"]))
    platform = rattler.LockPlatform(subdir)
    lock = rattler.LockFile([platform])
    lock.set_channels("default", [rattler.LockChannel(channel.as_uri())])
    for record in records:
        lock.add_conda_package("default", platform, record)
    lock.to_path(path)
    return path


def conda_lock_text(channel: Path, names: list[str], platform: str | None = None) -> str:
    """A conda-lock.yml (version 1) locking the channel's packages of those names (latest each)."""
    platform = platform or current_subdir()
    lines = [
        "version: 1",
        "metadata:",
        f"  platforms: [{platform}]",
        f"  channels: [{{url: {channel.as_uri()}, used_env_vars: []}}]",
        "package:",
    ]
    for name in names:
        path = max(channel.glob(f"*/{name}-*.tar.bz2"))
        data = path.read_bytes()
        version = path.name[len(name) + 1 :].rsplit("-", 1)[0]
        lines += [
            f"- name: {name}",
            f"  version: '{version}'",
            "  manager: conda",
            f"  platform: {platform}",
            "  dependencies: {}",
            f"  url: {path.as_uri()}",
            "  hash:",
            f"    md5: {hashlib.md5(data).hexdigest()}",
            f"    sha256: {hashlib.sha256(data).hexdigest()}",
            "  category: main",
            "  optional: false",
        ]
    return "\n".join(lines) + "\n"
