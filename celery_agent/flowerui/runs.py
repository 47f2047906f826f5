"""The runs table: ``/celery-agent/runs`` (the page) and ``/celery-agent/api/runs`` (its data).

The data is one page of :func:`celery_agent.runindex.page`: filters, sort, page size and cursor
come as URL arguments; the page keeps them in its own URL so a filtered view can be shared.
"""

from __future__ import annotations

from typing import Any

from tornado import web

from ..runindex import RunQuery, page
from .base import JsonApi, PageView


class RunsView(PageView):
    """The page: a filter bar, the table (sortable by its headers), next/previous page."""

    @web.authenticated
    def get(self) -> None:
        """Write the page shell; its script reads the data endpoint."""
        self.shell("runs.html", "Runs")


class RunsApi(JsonApi):
    """One page of runs as JSON: ``runs``, ``next`` (cursor), ``total``, ``scanned``."""

    @web.authenticated
    async def get(self) -> None:
        """Answer the query in the URL's arguments."""
        args = self.args()

        def read() -> dict[str, Any]:
            from ..app import get_store

            return page(get_store(), RunQuery.from_args(args))

        await self.answer(read)
