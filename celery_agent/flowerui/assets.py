"""The static files the pages load (``static/`` in this package: the chart script), served by
Flower behind its own authentication; nothing comes from a CDN, so the pages work offline."""

from __future__ import annotations

from functools import cache
from importlib import resources

from flower.views import BaseHandler
from tornado import web

STATIC_PATH = "/celery-agent/static"
#: the files served, with their content types
TYPES = {".js": "application/javascript; charset=UTF-8", ".css": "text/css; charset=UTF-8"}


@cache
def asset(name: str) -> str:
    """The text of static file ``name``; FileNotFoundError when there is none."""
    if "/" in name or name.startswith(".") or not name.endswith(tuple(TYPES)):
        raise FileNotFoundError(name)
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def url(base: str, name: str) -> str:
    """Where a page under ``base`` (Flower's url_prefix, "" or "/prefix") loads ``name`` from."""
    return f"{base}{STATIC_PATH}/{name}"


class AssetHandler(BaseHandler):
    """``/celery-agent/static/NAME``: one of the static files (tornado adds an ETag, so a browser
    that has it gets a 304)."""

    @web.authenticated
    def get(self, name: str) -> None:
        """Write the file."""
        try:
            text = asset(name)
        except (FileNotFoundError, IsADirectoryError):
            raise web.HTTPError(404, f"no static file {name!r}") from None
        self.set_header("Content-Type", TYPES["." + name.rsplit(".", 1)[-1]])
        self.set_header("Cache-Control", "no-cache")
        self.write(text)
