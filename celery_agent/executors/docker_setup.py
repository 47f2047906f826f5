"""``docker.setup``: system packages added to an image once, kept as a derived image and reused.

The setup commands run as root in a build ``FROM`` the image (by id), each in a ``RUN`` step, and
the image's user is restored after them, so its entrypoint, command and user stay as they were.
The result is tagged ``celery-agent-setup:<key>``, the key a hash of the image id and the
commands: a later run with the same image and setup finds the tag and builds nothing; a changed
setup or a new image under the same name builds a new one. Builds of one key are serialised by a
lock file, so two runs on a worker never build the same image twice.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..errors import EnvBuildError
from .docker_engine import connect, docker_module, short_error
from .docker_options import MANAGED_LABEL
from .steps import LogFn

logger = logging.getLogger(__name__)

#: repository of the derived images
SETUP_REPOSITORY = "celery-agent-setup"
_HINT = (
    "check the docker.setup commands (they run as root with /bin/sh, e.g. "
    "'apt-get update && apt-get install -y libgl1'), and that the image has the package manager"
)
#: variables a setup step gets from the worker: proxies (apt, curl and pip honour them)
_PROXIES = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


def setup_key(image_id: str, commands: Sequence[str]) -> str:
    """The derived image's tag: a hash of the base image's id and the setup commands."""
    text = json.dumps({"image": image_id, "setup": list(commands)}, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def dockerfile(image_id: str, user: str, commands: Sequence[str]) -> str:
    """The build file: the commands as root, then the image's own user back (when it has one)."""
    switch = user not in ("", "root", "0", "0:0")
    lines = [f"FROM {image_id}", *(["USER root"] if switch else [])]
    lines += [f"RUN {_one_line(command)}" for command in commands]
    lines += [f"USER {user}"] if switch else []
    return "\n".join(lines) + "\n"


def _one_line(command: str) -> str:
    """A setup command as one RUN line (its line breaks joined as the shell would read them)."""
    text = command.strip()
    if not text:
        raise EnvBuildError("a docker.setup command is empty", "remove the empty entry")
    return " \\\n    ".join(part.strip().rstrip("\\").rstrip() for part in text.splitlines())


def setup_image(
    client: Any,
    image: Any,
    commands: Sequence[str],
    *,
    lock_dir: Path,
    environ: Mapping[str, str],
    network: str | None,
    log: LogFn,
) -> tuple[Any, bool]:
    """The image with ``commands`` applied: (image, built). Found by tag when built before."""
    key = setup_key(str(image.id), commands)
    tag = f"{SETUP_REPOSITORY}:{key}"
    found = _get(client, tag)
    if found is not None:
        log(f"env: setup image {tag} reused")
        return found, False
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_dir / f"setup-{key}.lock"):
        found = _get(client, tag)
        if found is not None:
            return found, False
        log(f"env: building setup image {tag} ({len(commands)} command(s) as root)")
        user = str((image.attrs.get("Config") or {}).get("User") or "")
        _build(image, commands, user, tag, environ, network, log)
    return client.images.get(tag), True


def _get(client: Any, tag: str) -> Any | None:
    try:
        return client.images.get(tag)
    except docker_module().errors.ImageNotFound:
        return None


def _build(
    image: Any,
    commands: Sequence[str],
    user: str,
    tag: str,
    environ: Mapping[str, str],
    network: str | None,
    log: LogFn,
) -> None:
    text = dockerfile(str(image.id), user, commands)
    args = {name: environ[name] for name in _PROXIES if environ.get(name)}
    client = connect(timeout=3600)  # a build step may be silent for minutes (a big download)
    try:
        stream = client.api.build(
            fileobj=io.BytesIO(text.encode()),
            tag=tag,
            rm=True,
            forcerm=True,
            decode=True,
            buildargs=args,
            network_mode=network,
            labels={MANAGED_LABEL: "true", "celery-agent.setup-of": str(image.id)},
        )
        for event in stream:
            if "error" in event:
                detail = str(event.get("error", "")).strip()
                raise EnvBuildError(f"docker.setup failed building {tag}: {detail}", _HINT)
            for line in str(event.get("stream", "")).splitlines():
                if line.strip():
                    log(line)
    except EnvBuildError:
        raise
    except Exception as exc:  # APIError, a lost engine
        raise EnvBuildError(f"docker.setup failed: {short_error(exc)}", _HINT) from None
    finally:
        client.close()
