"""What a container run is made of, worked out without an engine: mounts, paths, env, labels, GPUs.

The run's host paths (checkout, output folder, run folder, argparse hook, local wheel folders) are
bind-mounted under :data:`ROOT` in the container; :class:`PathMap` turns host paths in the run's
argv and environment into their container paths. The worker's own variables (PATH, HOME, ...)
never reach the container: it keeps the image's.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import SpecError
from ..runenv import THREAD_VARS

logger = logging.getLogger(__name__)

#: where the agent mounts a run's folders inside the container
ROOT = "/celery-agent"
SRC, OUTPUT, RUN, HOOK, PARAMS = (f"{ROOT}/{n}" for n in ("src", "output", "run", "hook", "params"))
LINKS = f"{ROOT}/links"  #: local find-links folders: LINKS/0, LINKS/1, ...
CACHE = f"{ROOT}/cache"  #: the installer cache volume shared by all runs
#: the named volume holding pip's and uv's download caches
CACHE_VOLUME = "celery-agent-pip-cache"
#: where requirements are installed inside the container (its own writable layer)
SITE = "/tmp/celery-agent-site"
#: the PATH of an image that sets none
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: label prefix of every container the agent creates
LABEL_PREFIX = "celery-agent."
MANAGED_LABEL = f"{LABEL_PREFIX}managed"
#: the label naming what a long-lived container is for, and the value of a network holder
ROLE_LABEL, NETWORK_ROLE = f"{LABEL_PREFIX}role", "network"

#: run variables passed into the container by name, besides CELERY_AGENT_* and the spec's own
_PASS = frozenset((*THREAD_VARS, "PYTHONUNBUFFERED", "PYTHONPATH", "CUDA_DEVICE_ORDER"))
_PASS_PREFIXES = ("CELERY_AGENT_", "NCCL_")


@dataclass(frozen=True)
class Mount:
    """One mount: a host folder (or a named volume) at a container path."""

    source: str  #: absolute host path, or a volume name
    target: str  #: absolute container path
    read_only: bool = True

    @property
    def is_volume(self) -> bool:
        """True for a named volume, False for a host folder."""
        return not self.source.startswith("/")

    def to_docker(self) -> Any:
        """The docker SDK's ``Mount`` for this mount."""
        from docker.types import Mount as DockerMount

        kind = "volume" if self.is_volume else "bind"
        return DockerMount(self.target, self.source, type=kind, read_only=self.read_only)


def parse_volume(text: str) -> Mount:
    """``'host:container[:ro|rw]'`` (read-only unless ``rw``); host is an absolute path or a
    volume name. Raises :class:`SpecError` naming the problem."""
    parts = text.split(":")
    mode = parts.pop() if len(parts) == 3 else "ro"
    if len(parts) != 2 or mode not in ("ro", "rw"):
        raise SpecError(
            f"docker volume {text!r} is malformed",
            "write it as 'host_path:container_path' with an optional ':ro' or ':rw'",
        )
    source, target = parts
    if not source or (not source.startswith("/") and "/" in source):
        raise SpecError(
            f"docker volume {text!r}: the host side must be an absolute path or a volume name",
            "use an absolute host path such as /data/imagenet",
        )
    if not target.startswith("/"):
        raise SpecError(
            f"docker volume {text!r}: the container side must be an absolute path",
            "use an absolute container path such as /data",
        )
    return Mount(source, posixpath.normpath(target), read_only=mode == "ro")


class PathMap:
    """Host folders mounted into the container, and the container path of any host path."""

    def __init__(self) -> None:
        self.mounts: list[Mount] = []

    def add(self, host: str | os.PathLike[str], target: str, *, read_only: bool = False) -> str:
        """Mount ``host`` at ``target`` unless it is already mounted; return its container path."""
        host = os.path.normpath(os.fspath(host))
        for mount in self.mounts:
            if mount.source == host:
                return mount.target
        self.mounts.append(Mount(host, target, read_only=read_only))
        return target

    def covers(self, path: str | os.PathLike[str]) -> bool:
        """True when ``path`` is inside a mounted host folder."""
        return self._match(os.fspath(path)) is not None

    def translate(self, path: str) -> str:
        """The container path of ``path``; anything not inside a mounted folder is returned as is."""
        if not path.startswith("/"):
            return path
        found = self._match(path)
        if found is None:
            return path
        mount, rest = found
        return posixpath.join(mount.target, rest) if rest else mount.target

    def translate_list(self, value: str) -> str:
        """Each entry of a ``:``-separated value (PYTHONPATH, a single path) translated."""
        return ":".join(self.translate(part) for part in value.split(":"))

    def _match(self, path: str) -> tuple[Mount, str] | None:
        """The mount holding ``path`` (the deepest one), compared as written and with symlinks
        resolved, and the rest of the path below it."""
        best: tuple[Mount, str] | None = None
        depth = -1
        for mount in self.mounts:
            if mount.is_volume:
                continue
            for host in _forms(mount.source):
                for candidate in _forms(path):
                    rest = _below(candidate, host)
                    if rest is not None and len(host) > depth:
                        best, depth = (mount, rest), len(host)
        return best


def _forms(path: str) -> set[str]:
    return {os.path.normpath(path), os.path.realpath(path)}


def _below(path: str, folder: str) -> str | None:
    """``path`` relative to ``folder`` ("" for the folder itself), None when it is outside."""
    if path == folder:
        return ""
    prefix = folder.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else None


def container_env(
    run_env: Mapping[str, str], names: Iterable[str], paths: PathMap
) -> dict[str, str]:
    """The container's environment from the run's: the agent's CELERY_AGENT_* variables, thread
    counts, PYTHONUNBUFFERED/PYTHONPATH, NCCL_* and the variables in ``names`` (the spec's and
    docker options' own), host paths made container paths. The worker's PATH, HOME and the rest
    stay out, so the image's own apply."""
    wanted = set(names)
    env: dict[str, str] = {}
    for name, value in run_env.items():
        if name in wanted or name in _PASS or name.startswith(_PASS_PREFIXES):
            env[name] = paths.translate_list(value)
    return env


def with_site(pythonpath: str | None, hook: str = HOOK) -> str:
    """PYTHONPATH with the installed-requirements folder right after the argparse hook."""
    parts = [p for p in (pythonpath or "").split(":") if p]
    at = 1 if parts and parts[0] == hook else 0
    return ":".join([*parts[:at], SITE, *parts[at:]])


def labels(run_labels: Mapping[str, str]) -> dict[str, str]:
    """Container labels naming the run, worker and queue (``celery-agent.run-id`` ...)."""
    out = {MANAGED_LABEL: "true"}
    for key, value in run_labels.items():
        out[LABEL_PREFIX + key.replace("_", "-")] = str(value)
    return out


def device_requests(gpus: Sequence[str]) -> list[Any] | None:
    """A device request for exactly ``gpus`` (ids or UUIDs); None (no GPU) for an empty list."""
    if not gpus:
        return None
    from docker.types import DeviceRequest

    return [DeviceRequest(device_ids=[str(g) for g in gpus], capabilities=[["gpu"]])]


def visible_devices(gpus: Sequence[str]) -> dict[str, str]:
    """NVIDIA_VISIBLE_DEVICES for the container: the run's GPUs, or "void" for none. Set always, so
    an image that says "all" (CUDA images do) on an engine whose default runtime is nvidia still
    sees only the run's GPUs."""
    return {"NVIDIA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus) or "void"}


def install_argv(installer: str, python: str, args: Sequence[str]) -> list[str]:
    """The command that installs requirements into :data:`SITE` inside the container."""
    if installer == "uv":
        return ["uv", "pip", "install", "--no-config", "--python", python, "--target", SITE, *args]
    return [
        python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
        "--target", SITE, *args,
    ]  # fmt: skip


def installer_env(installer: str) -> dict[str, str]:
    """Variables that point the installer at the shared cache volume."""
    if installer == "uv":
        return {
            "UV_CACHE_DIR": f"{CACHE}/uv",
            "UV_NO_PROGRESS": "1",
            "UV_PYTHON_DOWNLOADS": "never",
        }
    return {
        "PIP_CACHE_DIR": f"{CACHE}/pip",
        "PIP_PROGRESS_BAR": "off",
        "PIP_ROOT_USER_ACTION": "ignore",
    }


def open_to_user(folders: Iterable[str | os.PathLike[str]], user: str) -> None:
    """Let a container's non-root ``user`` (``docker.user``) write ``folders`` (the run's output
    and run folders): given to a numeric ``uid[:gid]`` when the worker is root, else opened to all
    (a user name is only known inside the image)."""
    name, _, group = user.partition(":")
    if name in ("0", "root"):
        return
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
        if name.isdigit() and os.geteuid() == 0:
            os.chown(folder, int(name), int(group) if group.isdigit() else -1)
        else:
            os.chmod(folder, 0o777)
