"""The Docker engine as the docker executor sees it: reach it, get an image, probe it, reap.

The docker SDK is imported here, lazily: without the ``docker`` package installed every call
raises :class:`ExecutorUnavailable` with the install command.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..errors import EnvBuildError, ExecutorUnavailable
from .docker_options import LABEL_PREFIX, MANAGED_LABEL, NETWORK_ROLE, ROLE_LABEL
from .steps import LogFn

logger = logging.getLogger(__name__)

#: seconds an ordinary engine call may take (create, inspect, remove)
API_TIMEOUT = 60
#: seconds a pull may go without a progress message before it is given up
PULL_READ_TIMEOUT = 120
#: the default engine socket when DOCKER_HOST is not set
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
_HINT = "start the Docker engine (dockerd), or point DOCKER_HOST at a running one"
_INSTALL_HINT = "pip install 'celery-agent[docker]'"


def docker_module() -> Any:
    """The docker SDK module; raises ExecutorUnavailable with the install command when missing."""
    try:
        import docker
    except ImportError:
        raise ExecutorUnavailable(
            "the docker executor needs the package 'docker'", _INSTALL_HINT
        ) from None
    return docker


def engine_address() -> str:
    """Where the engine is looked for: DOCKER_HOST, else the default socket."""
    return os.environ.get("DOCKER_HOST") or f"{DEFAULT_SOCKET} (DOCKER_HOST is not set)"


def connect(timeout: float = API_TIMEOUT) -> Any:
    """A docker client talking to a live engine; raises ExecutorUnavailable naming the address."""
    docker = docker_module()
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:  # DockerException, requests' ConnectionError, a bad DOCKER_HOST
        raise ExecutorUnavailable(
            f"no Docker engine reachable at {engine_address()}: {short_error(exc)}", _HINT
        ) from None
    return client


def short_error(exc: BaseException) -> str:
    """The first line of an error, at most 300 characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


# -- images ---------------------------------------------------------------------------------------
def ensure_image(client: Any, ref: str, policy: str, log: LogFn) -> tuple[Any, bool]:
    """The image ``ref`` under the pull policy; returns (image, pulled)."""
    errors = docker_module().errors
    local = None
    if policy != "always":
        try:
            local = client.images.get(ref)
        except errors.ImageNotFound:
            local = None
        except errors.APIError as exc:
            raise EnvBuildError(
                f"cannot look up image {ref!r}: {short_error(exc)}", _HINT
            ) from None
    if local is not None:
        return local, False
    if policy == "never":
        raise EnvBuildError(
            f"image {ref!r} is not on this worker and its pull policy is 'never'",
            f"load it first (docker pull {ref} / docker load), or set docker.pull to 'if-missing'",
        )
    return pull(ref, log), True


def pull(ref: str, log: LogFn) -> Any:
    """Pull ``ref`` (one tag, never all), bounded: a pull silent for PULL_READ_TIMEOUT fails."""
    docker = docker_module()
    repo, tag = docker.utils.parse_repository_tag(ref)
    log(f"env: pulling image {ref}")
    client = connect(timeout=PULL_READ_TIMEOUT)
    try:
        for event in client.api.pull(repo, tag=tag or "latest", stream=True, decode=True):
            if "error" in event:
                raise EnvBuildError(f"cannot pull image {ref!r}: {event['error']}", _pull_hint(ref))
        return client.images.get(ref if tag or "@" in ref else f"{ref}:latest")
    except EnvBuildError:
        raise
    except Exception as exc:  # APIError (registry unreachable), a read timeout, ImageNotFound
        raise EnvBuildError(
            f"cannot pull image {ref!r}: {short_error(exc)}", _pull_hint(ref)
        ) from None
    finally:
        client.close()


def _pull_hint(ref: str) -> str:
    return (
        f"check the image name and that the registry is reachable from this worker, "
        f"or load {ref} on it and set docker.pull to 'never'"
    )


def short_id(image: Any) -> str:
    """An image's id without the ``sha256:`` prefix, 12 hex digits."""
    return str(image.id).split(":", 1)[-1][:12]


# -- what an image offers -------------------------------------------------------------------------
_PROBE = (
    'command -v "$0" >/dev/null 2>&1 || { echo missing; exit 0; }; '
    "if command -v uv >/dev/null 2>&1; then echo uv; "
    'elif "$0" -m pip --version >/dev/null 2>&1; then echo pip; else echo none; fi'
)


def probe_installer(client: Any, image: Any, python: str, cache_dir: Path) -> str:
    """Which installer the image has for ``python``: "uv", "pip", "none" or "missing" (no such
    interpreter). Asked once per image id with a throwaway container; the answer is kept on disk."""
    record = cache_dir / f"probe-{short_id(image)}-{_safe(python)}.json"
    try:
        return str(json.loads(record.read_text())["installer"])
    except (OSError, ValueError, KeyError):
        pass
    answer = _run_probe(client, image, python)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"installer": answer, "image": image.id, "python": python}))
    return answer


def _run_probe(client: Any, image: Any, python: str) -> str:
    try:
        out = client.containers.run(
            image.id, ["-c", _PROBE, python], entrypoint=["sh"], remove=True, network_mode="none"
        )
    except Exception as exc:  # ContainerError (no sh), APIError
        raise EnvBuildError(
            f"cannot inspect image {(image.tags or [short_id(image)])[0]}: {short_error(exc)}",
            "the image needs /bin/sh to install requirements; or set docker.install to false",
        ) from None
    words = out.decode(errors="replace").split()
    return words[-1] if words else "none"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)[:40]


# -- containers left behind -----------------------------------------------------------------------
def reap_stale_containers(worker: str) -> int:
    """Remove every container the agent started for ``worker`` (by label), running or not, and
    return how many. Called when a worker starts: containers of a crashed predecessor of the same
    name are orphans; its network holder is kept, for the new worker's runs to join. Without a
    reachable engine (or the docker package) nothing is done."""
    try:
        client = connect()
    except ExecutorUnavailable as exc:
        logger.debug("no stale containers reaped: %s", exc)
        return 0
    try:
        wanted = [MANAGED_LABEL, f"{LABEL_PREFIX}worker={worker}"]
        # sparse: no inspect per container, which fails for one removed meanwhile
        found = client.containers.list(all=True, filters={"label": wanted}, sparse=True)
        kept = [c for c in found if (c.attrs.get("Labels") or {}).get(ROLE_LABEL) == NETWORK_ROLE]
        removed = sum(_remove(c) for c in found if c not in kept)
    finally:
        client.close()
    if removed:
        logger.warning("removed %d container(s) left by a previous %s", removed, worker)
    return removed


def _remove(container: Any) -> bool:
    try:
        container.remove(force=True)
    except Exception as exc:  # already gone, or the engine refused
        logger.warning("could not remove container %s: %s", container.short_id, short_error(exc))
        return False
    return True
