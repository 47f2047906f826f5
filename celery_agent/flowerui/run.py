"""A run's page: ``/celery-agent/runs/RUN_ID`` and its data ``/celery-agent/api/runs/RUN_ID``.

An unknown id gets a 404 page (or a 404 error object) that says so. The id may be a unique prefix
or a run's name, as on the command line (:func:`celery_agent.lookup.find_run`).
"""

from __future__ import annotations

import time
from typing import Any

from tornado import web

from ..errors import UnknownRunError
from ..runview import run_view
from .base import JsonApi, PageView, blocking


def _find(ref: str) -> str:
    from ..app import get_store
    from ..lookup import find_run

    return find_run(get_store(), ref)


class RunView(PageView):
    """The page: outcome, timings, spec, live log, resources, artifacts, cancel and rerun."""

    @web.authenticated
    async def get(self, ref: str) -> None:
        """Write the page shell for the run, or the 404 page."""
        try:
            run_id = await blocking(lambda: _find(ref))
        except UnknownRunError as err:
            self.not_found(f"Unknown run: {err.message}.", "Check the id in the runs table.")
            return
        self.shell("run.html", f"Run {run_id[:12]}", run_id=run_id)


class RunApi(JsonApi):
    """The run's data as JSON (see :func:`celery_agent.runview.run_view`)."""

    @web.authenticated
    async def get(self, ref: str) -> None:
        """Answer the run's data."""

        def read() -> dict[str, Any]:
            from ..app import get_store

            return run_view(get_store().get(_find(ref)), time.time())

        await self.answer(read)
