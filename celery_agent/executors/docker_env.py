"""Requirements installed once per (image, requirement set, installer) and reused in place.

A run's requirements are installed by a one-off install container into a folder of the docker
executor's env cache (``cache_root/docker/<key>/env``), bind-mounted at :data:`SITE`; later runs
of the same image and requirements mount that folder read-only at the same path, so they start
with nothing to install. The install step gets the worker's index configuration (see
:mod:`.docker_index`) unless ``docker.index_config`` is ``"none"``; a failure says what went wrong,
and one that is the index's TLS certificate names the index and what to set.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EnvBuildError, StageTimeout
from . import docker_lock
from . import docker_options as opt
from .docker_engine import connect, short_error
from .docker_index import IndexConfig
from .envsource import EnvSource
from .steps import TAIL_LINES, LogFn

logger = logging.getLogger(__name__)

_INSTALL_HINT = "check the requirement names and versions, or the index"
_TLS = re.compile(
    r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|invalid peer certificate|"
    r"self[- ]signed certificate|UnknownIssuer|SSLError",
    re.IGNORECASE,
)
_URL = re.compile(r"https?://[^\s'\"()<>]+")


@dataclass
class SiteInstall:
    """One install of a run's requirements into a cached folder; called by the env cache."""

    image_id: str
    installer: str
    python: str
    args: list[str]  #: installer arguments after ``install``: host paths, translated here
    source_dir: Path  #: the checkout, mounted read-only (requirements files, relative folders)
    link_dirs: list[str]  #: local find-links folders
    index: IndexConfig  #: the worker's index configuration; empty for index_config "none"
    index_mode: str
    config_dir: Path  #: where the merged index config files are written
    network: str | None
    log: LogFn
    timeout: float | None
    #: a lock file's source: pinned on the worker (:mod:`.docker_lock`), installed with --no-deps
    lock: EnvSource | None = None
    _pins_dir: Path | None = field(default=None, init=False)  #: where the pinned file is

    def __call__(self, env_dir: Path) -> dict[str, Any]:
        env_dir.mkdir(parents=True, exist_ok=True)
        if self.lock is not None:
            pins = docker_lock.pinned(self.lock, self.source_dir, env_dir.parent / "lock", self.log)
            self.args = [*self.args, "--no-deps", "-r", str(pins)]
            self._pins_dir = pins.parent
        argv = opt.install_argv(self.installer, self.python, self._args())
        if self.installer == "uv":
            argv.insert(3, "--compile-bytecode")
        self.log(f"env: installing requirements in a container of image {self.image_id[7:19]} "
                 f"with {self.installer}; index configuration: {self.index.summary}")  # fmt: skip
        lines = run_step(self._create(env_dir, argv), self.log, self.timeout, self.index.mask)
        if lines.exit_code != 0:
            raise install_error(lines.lines, lines.exit_code, self.installer, self.index_mode)
        return {
            "installer": self.installer,
            "image": self.image_id,
            "index": self.index.summary,
            "freeze": installed(env_dir),
        }

    def _paths(self) -> opt.PathMap:
        paths = opt.PathMap()
        paths.add(self.source_dir, opt.SRC, read_only=True)
        if self._pins_dir is not None:
            paths.add(self._pins_dir, f"{opt.ROOT}/lock", read_only=True)
        for i, folder in enumerate(self.link_dirs):
            if not paths.covers(folder):
                paths.add(folder, f"{opt.LINKS}/{i}", read_only=True)
        return paths

    def _args(self) -> list[str]:
        paths = self._paths()
        return [paths.translate(a) for a in self.args]

    def _create(self, env_dir: Path, argv: list[str]) -> dict[str, Any]:
        mounts = [
            *self._paths().mounts,
            opt.Mount(str(env_dir), opt.SITE, read_only=False),
            opt.Mount(opt.CACHE_VOLUME, opt.CACHE, read_only=False),
            *self.index.mounts,
            *self.index.written(self.config_dir),
        ]
        root = os.geteuid() == 0
        env = (
            opt.installer_env(self.installer) | self.index.env | ({} if root else {"HOME": "/tmp"})
        )
        return {
            "image": self.image_id,
            "entrypoint": argv[:1],
            "command": argv[1:],
            "environment": env,
            "working_dir": opt.SRC,
            "mounts": [m.to_docker() for m in mounts],
            "labels": {opt.MANAGED_LABEL: "true", "celery-agent.step": "install"},
            "network_mode": self.network,
            # the worker's own user, so the worker can remove what the install wrote
            "user": "0:0" if root else f"{os.geteuid()}:{os.getegid()}",
            "detach": True,
        }


@dataclass
class StepOutput:
    """What a one-off container printed and how it ended."""

    lines: list[str]
    exit_code: int


def run_step(
    create: dict[str, Any],
    log: LogFn,
    timeout: float | None,
    mask: Callable[[str], str] = str,
) -> StepOutput:
    """Run a one-off container to its end, each output line masked and logged; always removed.

    Past ``timeout`` seconds the container is killed and :class:`StageTimeout` raised."""
    client = connect(timeout=max(60.0, timeout or 0) + 30)
    try:
        container = client.containers.create(**create)
    except Exception as exc:
        client.close()
        raise EnvBuildError(
            f"cannot create the install container: {short_error(exc)}",
            "check the image and the docker options (network, volumes)",
        ) from None
    lines: list[str] = []
    reader = threading.Thread(target=_read, args=(container, lines, log, mask), daemon=True)
    try:
        container.start()
        reader.start()
        code = _wait(container, timeout)
        reader.join(5.0)
        return StepOutput(lines, code)
    finally:
        try:
            container.remove(force=True)
        except Exception as exc:  # already gone
            logger.debug("removing the install container: %s", exc)
        client.close()


def _wait(container: Any, timeout: float | None) -> int:
    started = time.monotonic()
    try:
        return int(container.wait(timeout=timeout)["StatusCode"])
    except Exception as exc:  # a read timeout past the limit, or the engine went away
        if timeout is not None and time.monotonic() - started >= timeout - 1:
            raise StageTimeout(
                f"env stage timed out after {timeout:g}s while installing in the container",
                "raise the build timeout, or install the requirements in the image",
            ) from None
        raise EnvBuildError(
            f"lost the install container: {short_error(exc)}", "check the Docker engine"
        ) from None


def _read(container: Any, lines: list[str], log: LogFn, mask: Callable[[str], str]) -> None:
    rest = b""
    try:
        for chunk in container.logs(stream=True, follow=True):
            rest += chunk
            *done, rest = rest.split(b"\n")
            for raw in done:
                line = mask(raw.decode(errors="replace").rstrip("\r"))
                lines.append(line)
                log(line)
        if rest:
            lines.append(mask(rest.decode(errors="replace")))
            log(lines[-1])
    except Exception as exc:  # the container was removed under the stream
        logger.debug("install log stream ended: %s", exc)


def install_error(lines: Sequence[str], code: int, installer: str, mode: str) -> EnvBuildError:
    """The error of a failed install: one that names the index and what to set when the index's
    TLS certificate was not trusted, else the installer's last lines."""
    tls = [line for line in lines if _TLS.search(line)]
    if not tls:
        tail = "\n".join(collections.deque(lines, maxlen=TAIL_LINES))
        return EnvBuildError(
            f"{installer} install in the container failed (exit {code}):\n{tail}", _INSTALL_HINT
        )
    urls = [m.group(0) for line in tls for m in [_URL.search(line)] if m]
    excerpt = next((line for line in tls if _URL.search(line)), tls[0]).strip()
    index = _index_of(urls[0]) if urls else "the package index"
    problem = "self-signed certificate in certificate chain"
    if not any(re.search(r"self[- ]signed", line, re.I) for line in tls):
        problem = "certificate not trusted"
    message = (
        f"{installer} install in the container failed: the TLS certificate of the package index "
        f"{index} was not verified ({problem}); the container does not trust the CA the worker "
        f"trusts.\n{excerpt[:400]}"
    )
    if mode == "none":
        hint = (
            "docker.index_config is 'none', so the worker's index settings and CA bundle stay out "
            "of the container: set docker.index_config to 'install' (the default), or put the CA "
            "bundle and PIP_CERT / SSL_CERT_FILE in the image"
        )
    else:
        hint = (
            "set PIP_CERT (pip) or SSL_CERT_FILE (uv) on the worker, or cert in its pip.conf, to "
            "the CA bundle that signs the index's certificate: it is mounted into the container"
        )
    return EnvBuildError(message, hint)


def _index_of(url: str) -> str:
    """An index's URL from a package page's: up to ``/simple`` when it has one, else the host."""
    at = url.find("/simple")
    if at > 0:
        return url[: at + len("/simple")]
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def installed(site: Path) -> list[str]:
    """'name==version' of each distribution installed in ``site`` (from its dist-info folders)."""
    out = []
    for path in site.glob("*.dist-info"):
        name, _, version = path.name.removesuffix(".dist-info").partition("-")
        if version:
            out.append(f"{name}=={version}")
    return sorted(out)


def folder_listing(folder: str | None) -> str | None:
    """A hash of a local folder's file names and sizes (new wheels change it), None if absent."""
    if folder is None or not os.path.isdir(folder):
        return None
    digest = hashlib.sha256()
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        size = entry.stat().st_size if entry.is_file() else -1
        digest.update(f"{entry.name}\0{size}\n".encode())
    return digest.hexdigest()[:16]
