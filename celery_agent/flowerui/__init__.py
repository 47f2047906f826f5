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
from .base import STATIC_PATH, AssetView

RUNS_PATH = "/celery-agent/runs"
RUNS_API_PATH = "/celery-agent/api/runs"
_ID = r"([0-9A-Za-z_.\-]+)"


def routes() -> list[Any]:
    """The handler entries added to Flower's application (named ones can be ``reverse_url``'d)."""
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
        (f"{STATIC_PATH}/(.+)", AssetView),
    ]
