"""The celery-agent pages inside Flower: its routes, one module per page.

Imported only when Flower runs (see :func:`celery_agent.flower.install`), so Flower stays an
optional extra. Every page and endpoint is a tornado handler subclassing Flower's own (see
:mod:`.base`), added ahead of Flower's catch-all under its url prefix.
"""

from __future__ import annotations

from typing import Any

from tornado.web import url

from ..flower import HARDWARE_API_PATH, HARDWARE_PATH
from . import actions, downloads, hardware, logstream, run, runs
from .assets import STATIC_PATH, AssetHandler
from .chartapi import CompareApi, MetricsApi, SearchApi, SearchesApi
from .comparepage import CompareView
from .searchpage import SearchesView, SearchView

RUNS_PATH = "/celery-agent/runs"
RUNS_API_PATH = "/celery-agent/api/runs"
_ID = r"([0-9A-Za-z_.\-]+)"


def routes() -> list[Any]:
    """The handler entries added to Flower's application (named ones can be ``reverse_url``'d)."""
    return [*run_routes(), *chart_routes()]


def run_routes() -> list[Any]:
    """The hardware page, the runs table, the run pages and their endpoints."""
    return [
        url(HARDWARE_PATH, hardware.HardwareView, name="celery-agent-hardware"),
        (HARDWARE_API_PATH, hardware.HardwareApi),
        url(RUNS_PATH, runs.RunsView, name="celery-agent-runs"),
        (RUNS_API_PATH, runs.RunsApi),
        url(f"{RUNS_PATH}/{_ID}", run.RunView, name="celery-agent-run"),
        (f"{RUNS_API_PATH}/{_ID}", run.RunApi),
        (f"{RUNS_API_PATH}/{_ID}/log", logstream.LogApi),
        (f"{RUNS_API_PATH}/{_ID}/log/stream", logstream.LogStream),
        (f"{RUNS_API_PATH}/{_ID}/cancel", actions.CancelApi),
        (f"{RUNS_API_PATH}/{_ID}/rerun", actions.RerunApi),
        (f"{RUNS_API_PATH}/{_ID}/artifacts/(.+)", downloads.ArtifactFile),
    ]


def chart_routes() -> list[Any]:
    """The static files, metric series, compare and searches pages and endpoints."""
    return [
        (STATIC_PATH + r"/([\w.-]+)", AssetHandler),
        (r"/celery-agent/api/runs/([^/]+)/metrics", MetricsApi),
        (r"/celery-agent/api/compare", CompareApi),
        (r"/celery-agent/api/searches", SearchesApi),
        (r"/celery-agent/api/searches/([^/]+)", SearchApi),
        (r"/celery-agent/compare", CompareView),
        (r"/celery-agent/searches", SearchesView),
        (r"/celery-agent/searches/([^/]+)", SearchView),
    ]
