"""Flower integration: a hardware page inside Flower's web app.

(The readable names Flower shows for runs are sent with each run: see :mod:`.dispatch`.)

Flower has no plugin API, but its tornado application takes its handler list from
``flower.urls.handlers``; :func:`install_handlers` inserts ours ahead of the catch-all there, before
the app is built (``celery-agent flower`` does it, see :mod:`.cli_services`):

- ``/celery-agent/hardware``: workers, GPUs, current runs and history charts (HTML, inline SVG);
- ``/celery-agent/api/hardware``: the same data as JSON (:func:`hardware_data`).

:func:`install_metrics` adds the fleet's Prometheus metrics (see :mod:`.exporter`) to Flower's own
``/metrics``, which serves ``prometheus_client``'s default registry.
"""

from __future__ import annotations

import logging
from typing import Any

from .state import RunStore
from .status import cluster_status
from .workers import ONLINE, WorkerRegistry

logger = logging.getLogger(__name__)

HARDWARE_PATH = "/celery-agent/hardware"
HARDWARE_API_PATH = "/celery-agent/api/hardware"


def hardware_data(
    registry: WorkerRegistry, store: RunStore, points: int = 60, now: float | None = None
) -> dict[str, Any]:
    """The cluster status (see :func:`.status.cluster_status`), each online worker with its
    current runs (id, name, state) and its last ``points`` history snapshots."""
    data = cluster_status(registry, now)
    for row in data["workers"]:
        online = row["state"] == ONLINE
        row["history"] = registry.history(row["name"], points) if online else []
        row["current"] = [run_summary(store, run_id) for run_id in row["runs"]]
    return data


def run_summary(store: RunStore, run_id: str) -> dict[str, Any]:
    """A run's id, display name and state (name None when its record is gone)."""
    try:
        record = store.get(run_id)
    except Exception as err:  # an expired record must not break the page
        logger.debug("run %s: %s", run_id, err)
        return {"id": run_id, "name": None, "state": None}
    spec = record.get("spec") or {}
    name = spec.get("name") or spec.get("entry")
    return {"id": run_id, "name": name, "state": record.get("state")}


def install_handlers(handlers: list[Any] | None = None) -> bool:
    """Insert the hardware page and API into Flower's handler list (``flower.urls.handlers`` by
    default) ahead of its catch-all; False when they are there already."""
    from .flowerui import routes

    if handlers is None:
        from flower import urls

        handlers = urls.handlers
    patterns = {_pattern(h) for h in handlers}
    if HARDWARE_PATH in patterns:
        return False
    at = next((i for i, h in enumerate(handlers) if _pattern(h) == ".*"), len(handlers))
    handlers[at:at] = routes()
    return True


def install_metrics(registry: Any = None) -> Any:
    """Register the fleet collector (this process's settings) in ``registry``, by default the
    ``prometheus_client`` registry Flower's ``/metrics`` serves; returns the collector."""
    from .app import get_settings
    from .exporter import fleet_collector

    if registry is None:
        from prometheus_client import REGISTRY as registry
    settings = get_settings()
    collector = fleet_collector(settings.redis_url, settings.broker, settings.prefix)
    registry.register(collector)
    return collector


def _pattern(handler: Any) -> str:
    """The path pattern of a tornado handler entry (a tuple or a URLSpec)."""
    if isinstance(handler, tuple | list):
        return str(handler[0])
    return str(handler.regex.pattern).rstrip("$")
