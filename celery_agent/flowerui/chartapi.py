"""The JSON endpoints behind the charts, the comparison and the searches (see docs/web-api.md).

They read, so they are protected as Flower's pages are (``--basic-auth``, ``--auth``; open where
the pages are: see :class:`.base.JsonApi`), and the pages that call them work wherever they open.
An error is JSON too: ``{"error": what is wrong, "hint": what to do}``
with status 400 (malformed request), 404 (no such run or search) or 503 (Redis unreachable).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from redis.exceptions import RedisError
from tornado import web

from ..app import get_store
from ..errors import AgentError, RequestError, StateError, UnknownRunError
from .base import JsonApi, blocking
from .comparison import COMPARE_POINTS, compare_data
from .document import to_json
from .searches import LISTED, search_detail, search_list
from .series import clamp_limit, run_series

T = TypeVar("T")


def guarded(read: Callable[[], T]) -> Callable[[], T]:
    """``read`` with a Redis failure turned into a StateError that says so (answered with 503)."""

    def run() -> T:
        try:
            return read()
        except RedisError as err:
            raise StateError(
                f"Redis did not answer: {err}",
                "check that Redis runs and that CELERY_AGENT_REDIS_URL points at it",
            ) from err

    return run


def status_of(err: AgentError) -> int:
    """The HTTP status an error answers with."""
    if isinstance(err, UnknownRunError):
        return 404
    if isinstance(err, RequestError):
        return 400
    return 503 if isinstance(err, StateError) else 500


class ChartApi(JsonApi):
    """A JSON endpoint: reads on the executor, answers errors as JSON."""

    async def answer(self, read: Callable[[], Any]) -> None:
        """Write ``read()``'s result, or the error it raised, as JSON."""
        try:
            data = await blocking(guarded(read))
        except AgentError as err:
            self.set_status(status_of(err))
            data = {"error": err.message, "hint": err.hint}
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.write(to_json(data))

    def text(self, name: str) -> str | None:
        """A query argument as given (not HTML-escaped: the JSON is not HTML)."""
        value = self.get_argument(name, default=None, escape=False)
        return None if value is None else str(value)

    def number(self, name: str) -> int | None:
        """An integer query argument (None when absent); RequestError when it is not one."""
        value = self.text(name)
        if value is None or value == "":
            return None
        try:
            return int(value)
        except ValueError:
            raise RequestError(
                f"{name} must be an integer, not {value!r}", f"give {name}=N"
            ) from None


class MetricsApi(ChartApi):
    """``/celery-agent/api/runs/RUN_ID/metrics[?points=N][&names=a,b]``: every metric series of
    a run, downsampled beyond ``points`` (2000 by default) with the last point kept."""

    @web.authenticated
    async def get(self, run_id: str) -> None:
        """Write the run's series."""

        def read() -> dict[str, Any]:
            names = [n for n in (self.text("names") or "").split(",") if n] or None
            return run_series(get_store(), run_id, clamp_limit(self.number("points")), names)

        await self.answer(read)


class CompareApi(ChartApi):
    """``/celery-agent/api/compare?ids=a,b[,...][&points=N]``: 2 to 10 runs side by side."""

    @web.authenticated
    async def get(self) -> None:
        """Write the comparison."""

        def read() -> dict[str, Any]:
            limit = self.number("points")
            points = COMPARE_POINTS if limit is None else clamp_limit(limit)
            return compare_data(get_store(), self.text("ids"), points)

        await self.answer(read)


class SearchesApi(ChartApi):
    """``/celery-agent/api/searches[?limit=N]``: the newest searches first."""

    @web.authenticated
    async def get(self) -> None:
        """Write the list."""

        def read() -> dict[str, Any]:
            limit = max(1, min(1000, self.number("limit") or LISTED))
            return {"searches": search_list(get_store(), limit)}

        await self.answer(read)


class SearchApi(ChartApi):
    """``/celery-agent/api/searches/SEARCH_ID``: one search, its trials and its objective chart."""

    @web.authenticated
    async def get(self, search_id: str) -> None:
        """Write the search."""
        await self.answer(lambda: search_detail(get_store(), search_id))
