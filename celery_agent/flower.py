"""Flower integration: the celery-agent pages inside Flower's web app.

(The readable names Flower shows for runs are sent with each run: see :mod:`.dispatch`.)

Flower has no plugin API, but its tornado application is built from two module-level values,
``flower.urls.handlers`` and ``flower.urls.settings``, after the Celery app is loaded.
:func:`install` changes both before that: our pages and endpoints go ahead of the catch-all in the
handler list (see :mod:`.flowerui`: runs, run pages, hardware), a template loader adds links to
them to Flower's navigation bar (:mod:`.flowerui.navbar`), and the fleet's Prometheus metrics
(see :mod:`.exporter`) join Flower's own ``/metrics``. ``celery-agent flower`` calls it; so does
the package's import when the process runs ``celery -A celery_agent flower`` (:func:`flower_command`).
Each part that fails is logged and left out: Flower itself still starts.

- ``/celery-agent/hardware``: workers, GPUs, current runs and history charts (HTML, inline SVG);
- ``/celery-agent/api/hardware``: the same data as JSON (:func:`hardware_data`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from .quotas import KINDS, Quotas
from .state import RunStore
from .status import cluster_status
from .usage import current
from .workers import ONLINE, WorkerRegistry

logger = logging.getLogger(__name__)

HARDWARE_PATH = "/celery-agent/hardware"
HARDWARE_API_PATH = "/celery-agent/api/hardware"
#: Celery's own options that take a value (``celery -A app flower``: the command comes after them)
_VALUED = frozenset({"-A", "--app", "-b", "--broker", "--result-backend", "--loader", "--config",
                     "--workdir"})  # fmt: skip
_installed: list[str] = []


def flower_command(argv: Sequence[str]) -> bool:
    """Whether ``argv`` runs Flower: its first word that is no option (nor an option's value)
    is ``flower`` (``celery -A celery_agent flower``, ``celery-agent flower``)."""
    skip = False
    for word in argv[1:]:
        if skip:
            skip = False
        elif word in _VALUED:
            skip = True
        elif not word.startswith("-"):
            return word == "flower"
    return False


def install() -> list[str]:
    """Add our pages, navigation links and metrics to Flower, once per process, and complete the
    runs table's indexes in the background; returns the parts done ("pages", "links", "metrics",
    "run indexes"). Called before Flower builds its application."""
    if _installed:
        return []
    parts = (("pages", install_handlers), ("links", install_links), ("metrics", install_metrics),
             ("run indexes", complete_run_indexes))  # fmt: skip
    for name, part in parts:
        try:
            part()
        except Exception as err:  # a Flower we do not know: leave it as it is
            logger.warning("celery-agent could not add its %s to Flower: %s", name, err)
        else:
            _installed.append(name)
    logger.debug("celery-agent added to Flower: %s (pid %d)", ", ".join(_installed), os.getpid())
    return list(_installed)


def complete_run_indexes() -> threading.Thread:
    """Add the runs recorded before the per-queue, user and tag indexes existed to them (see
    :func:`.runindex.complete_indexes`), in a background thread; until then the runs table
    filters by scanning."""
    from .app import get_store
    from .runindex import complete_indexes

    store = get_store()

    def work() -> None:
        try:
            added = complete_indexes(store)
        except Exception as err:  # (Redis away: the table scans, as before)
            logger.warning("could not complete the runs table's indexes: %s", err)
        else:
            logger.info("runs table indexes complete (%d runs added)", added)

    thread = threading.Thread(target=work, name="celery-agent-run-indexes", daemon=True)
    thread.start()
    return thread


def install_links(settings: dict[str, Any] | None = None) -> bool:
    """Put our links in Flower's navigation bar (see :mod:`.flowerui.navbar`)."""
    from .flowerui.navbar import install as install_navbar

    if settings is None:
        from flower import urls

        settings = urls.settings
    return install_navbar(settings)


def hardware_data(
    registry: WorkerRegistry, store: RunStore, points: int = 60, now: float | None = None,
    quotas: Quotas | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The cluster status (see :func:`.status.cluster_status`), each online worker with its
    current runs (id, name, state) and its last ``points`` history snapshots; the runs waiting
    and running per user, and each of ``quotas`` against what its user or project holds (as
    `celery-agent status` shows them)."""
    data = cluster_status(registry, now)
    for row in data["workers"]:
        online = row["state"] == ONLINE
        row["history"] = registry.history(row["name"], points) if online else []
        row["current"] = [run_summary(store, run_id) for run_id in row["runs"]]
    data["users"] = current(store, "user")
    held = quotas or Quotas(store)
    data["quotas"] = [row | {"kind": kind} for kind in KINDS for row in held.report(kind)]
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
    """Insert our pages and endpoints into Flower's handler list (``flower.urls.handlers`` by
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
