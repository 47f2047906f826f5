"""The network namespace a worker's containers share (``docker.network`` left unset).

Giving each container a bridged network namespace of its own (a veth pair, addresses, firewall
rules) is most of what starting a container costs: ~0.5 s of ~0.7 s on a loaded machine. A worker's
runs instead join one long-lived holder container on the default bridge (``sleep infinity``,
labelled with the worker's name and ``role=network``), as a pod's containers share theirs: each
run still has the bridge's network, isolated from the host's, and shares ``localhost`` and its
ports with the other runs of the same worker, as the venv executor's runs share the host's.
``docker.network: "bridge"`` gives a run a namespace of its own; any other value is used as is.

The holder is made by the first run that needs it (named after the worker, so concurrent runs find
one), restarted when it stopped, and kept when the worker stops: the same worker name reuses it.
When no holder can be made the run gets a namespace of its own, as before.
"""

from __future__ import annotations

import hashlib
import logging
import socket
from typing import Any

from .docker_engine import docker_module, short_error
from .docker_options import LABEL_PREFIX, MANAGED_LABEL, NETWORK_ROLE, ROLE_LABEL

logger = logging.getLogger(__name__)


def holder_name(worker: str) -> str:
    """The holder container's name for ``worker``."""
    return "celery-agent-net-" + hashlib.sha256(worker.encode()).hexdigest()[:16]


def shared_network(client: Any, image_id: str, worker: str | None) -> str | None:
    """``container:<id>`` of the worker's running network holder (made from ``image_id`` when
    there is none), or None when it cannot be had (then the run gets a namespace of its own)."""
    worker = worker or socket.gethostname()
    name = holder_name(worker)
    try:
        holder = _running(client, name) or _create(client, name, image_id, worker)
    except Exception as exc:  # an image without sleep, an engine refusing: not fatal
        logger.warning("runs get a network of their own: no network holder (%s)", short_error(exc))
        return None
    return f"container:{holder.id}"


def _running(client: Any, name: str) -> Any | None:
    """The holder named ``name``, started if it had stopped; None when there is none."""
    try:
        holder = client.containers.get(name)
    except docker_module().errors.NotFound:
        return None
    if holder.status != "running":
        holder.start()
    return holder


def _create(client: Any, name: str, image_id: str, worker: str) -> Any:
    errors = docker_module().errors
    labels = {MANAGED_LABEL: "true", f"{LABEL_PREFIX}worker": worker, ROLE_LABEL: NETWORK_ROLE}
    try:
        return client.containers.run(
            image_id, ["infinity"], entrypoint=["sleep"], name=name, labels=labels,
            detach=True, init=True,
        )  # fmt: skip
    except errors.APIError as exc:
        if exc.status_code == 409:  # another run made it first
            return _running(client, name)
        _discard(client, name)
        raise


def _discard(client: Any, name: str) -> None:
    """Remove a holder that was made but would not start, so the next run tries afresh."""
    try:
        client.containers.get(name).remove(force=True)
    except Exception as exc:  # it was never made
        logger.debug("no network holder %s to remove: %s", name, exc)
