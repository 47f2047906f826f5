"""What every celery-agent page and endpoint inside Flower shares.

Every handler subclasses Flower's own (``BaseHandler``; the actions its ``BaseApiHandler``), so
Flower's ``--basic-auth``, ``--auth`` (OAuth) and ``FLOWER_UNAUTHENTICATED_API`` apply to them as
to Flower's pages and API. Redis is read on Flower's executor (the calls block). Pages are HTML
shells from the package's ``static`` folder, filled in by their scripts from the JSON endpoints.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache
from html import escape
from importlib import resources
from typing import Any, TypeVar

from flower.api import BaseApiHandler
from flower.views import BaseHandler
from tornado import web
from tornado.ioloop import IOLoop

from ..errors import AgentError, UnknownRunError

T = TypeVar("T")


async def blocking(fn: Callable[[], T]) -> T:
    """``fn()`` run on the application's executor (Redis calls block the loop otherwise)."""
    return await IOLoop.current().run_in_executor(None, fn)


def prefix(handler: web.RequestHandler) -> str:
    """Flower's url prefix as a path start ('' or '/flower')."""
    options = getattr(handler.application, "options", None)
    value = str(getattr(options, "url_prefix", "") or "")
    return "/" + value.strip("/") if value.strip("/") else ""


@lru_cache(maxsize=32)
def shell_text(name: str) -> str:
    """An HTML shell of the static folder, as text (scripts and styles: see :mod:`.assets`)."""
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


class PageView(BaseHandler):
    """A page: an HTML shell filled in with the prefix, the XSRF token and page values."""

    def shell(self, name: str, title: str, **values: str) -> None:
        """Write static ``name`` with ``{{prefix}}``, ``{{xsrf}}``, ``{{title}}`` and each of
        ``values`` replaced (HTML-escaped)."""
        text = shell_text(name)
        fills = {"prefix": prefix(self), "xsrf": self.xsrf_token.decode(), "title": title, **values}
        for key, value in fills.items():
            text = text.replace("{{" + key + "}}", escape(value))
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.write(text)

    def not_found(self, what: str, hint: str) -> None:
        """The 404 page: says what is not there and what to do."""
        self.set_status(404)
        self.shell("notfound.html", "Not found", what=what, hint=hint)


class _Json(BaseHandler):
    """Answers in JSON; an :class:`AgentError` becomes an error object (``error``, ``hint``)
    with 404 for an unknown run, 400 for anything else."""

    def arg(self, name: str, default: str = "") -> str:
        """A query or form argument as sent (Flower's own ``get_argument`` HTML-escapes it)."""
        return str(web.RequestHandler.get_argument(self, name, default) or default)

    def args(self) -> dict[str, str]:
        """Every argument as sent (the last value of each)."""
        return {k: self.arg(k) for k in self.request.arguments}

    def send(self, data: Any, status: int = 200) -> None:
        """Write ``data`` as JSON."""
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(data, default=str))

    async def answer(self, fn: Callable[[], Any]) -> None:
        """Send what ``fn()`` returns (run on the executor), or the error it raised."""
        try:
            data = await blocking(fn)
        except UnknownRunError as err:
            self.send(_error(err), 404)
            return
        except AgentError as err:
            self.send(_error(err), 400)
            return
        self.send(data)


class JsonApi(_Json):
    """An endpoint that reads (GET): protected as Flower's pages are (``--basic-auth``,
    ``--auth``; open where they are), so the pages that call it work wherever they open."""


class ActionApi(_Json, BaseApiHandler):
    """An endpoint that changes something (POST): protected as Flower's own API is (auth, or
    ``FLOWER_UNAUTHENTICATED_API=true``) and same-origin checked as Flower does; besides, the
    request must echo the ``_xsrf`` cookie's token (form field ``_xsrf`` or header
    ``X-XSRFToken``), with or without authentication."""

    def check_xsrf_cookie(self) -> None:
        """Credentials first (tornado checks the token before anything else: a request without
        them is told 401, not 403), Flower's origin checks, then the token in every case."""
        _ = self.current_user  # (Flower's basic auth raises 401 here)
        super().check_xsrf_cookie()
        web.RequestHandler.check_xsrf_cookie(self)


def _error(err: AgentError) -> dict[str, str]:
    return {
        "error": str(getattr(err, "message", None) or err),
        "hint": str(getattr(err, "hint", "") or ""),
    }


__all__ = ["ActionApi", "JsonApi", "PageView", "blocking", "prefix", "web"]
