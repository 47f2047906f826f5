"""The hardware page inside Flower: tornado handlers (Flower's auth applies) over :mod:`..flower`."""

from __future__ import annotations

import json
from typing import Any

from flower.api import BaseApiHandler
from flower.views import BaseHandler
from tornado import web
from tornado.ioloop import IOLoop

from ..flower import hardware_data
from .page import render_page

#: history points fetched per worker (one per heartbeat: 5 minutes at the default 5 s)
POINTS = 60


async def collect(points: int = POINTS) -> dict[str, Any]:
    """The hardware data, read from Redis on the executor (Redis calls block)."""
    from ..app import get_registry, get_settings, get_store
    from ..quotas import Quotas, parse_settings

    def read() -> dict[str, Any]:
        quotas = Quotas(get_store(), parse_settings(get_settings().quotas))
        return hardware_data(get_registry(), get_store(), points, quotas=quotas)

    return await IOLoop.current().run_in_executor(None, read)


class HardwareView(BaseHandler):
    """The page: workers, GPU bars, current runs, history charts; refreshes itself."""

    @web.authenticated
    async def get(self) -> None:
        """Render the page."""
        points = self.get_argument("points", default=POINTS, type=int)
        data = await collect(points)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.write(render_page(data, self.application.options.url_prefix or ""))


class HardwareApi(BaseApiHandler):
    """The same data as JSON; like Flower's own API, it needs authentication or
    FLOWER_UNAUTHENTICATED_API=true."""

    @web.authenticated
    async def get(self) -> None:
        """Write the data."""
        points = self.get_argument("points", default=POINTS, type=int)
        data = await collect(points)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(data, default=str))
