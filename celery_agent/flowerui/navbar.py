"""Links to the celery-agent pages in Flower's own navigation bar.

Flower renders its bar from the ``navbar.html`` template. The template loader put in Flower's
settings (:class:`NavLoader`) reads that file as Flower ships it and adds our links after Flower's
last link (its first ``</ul>``). A Flower whose template has no such place keeps its bar unchanged
(logged once): the pages still answer at their paths.
"""

from __future__ import annotations

import logging
import os

from tornado.template import Loader, Template

logger = logging.getLogger(__name__)

NAVBAR = "navbar.html"
#: (label, path under the url prefix) of each link added
LINKS = (("Runs", "/celery-agent/runs"), ("Hardware", "/celery-agent/hardware"),
         ("Searches", "/celery-agent/searches"))  # fmt: skip
_BASE = (
    "{{ ('/' + handler.application.options.url_prefix.strip('/'))"
    " if handler.application.options.url_prefix else '' }}"
)


def with_links(text: str) -> str:
    """``navbar.html``'s text with our links added before its first ``</ul>`` (unchanged when
    there is none, or when they are there already)."""
    at = text.find("</ul>")
    if at < 0 or "/celery-agent/runs" in text:
        return text
    items = "".join(
        f'<li class="nav-item"><a class="nav-link" href="{_BASE}{path}">{label}</a></li>'
        for label, path in LINKS
    )
    return text[:at] + items + text[at:]


class NavLoader(Loader):
    """Flower's template loader, with :func:`with_links` applied to its navigation bar."""

    def _create_template(self, name: str) -> Template:
        if name != NAVBAR:
            return super()._create_template(name)
        with open(os.path.join(self.root, name), encoding="utf-8") as f:
            text = f.read()
        changed = with_links(text)
        if changed == text:
            logger.warning("Flower's %s has no link list: its bar stays without ours", name)
        return Template(changed, name=name, loader=self)


def install(settings: dict[str, object]) -> bool:
    """Put a :class:`NavLoader` over Flower's ``template_path`` into its application settings
    (``flower.urls.settings``); False when a template loader is set already."""
    if "template_loader" in settings or not settings.get("template_path"):
        return False
    settings["template_loader"] = NavLoader(str(settings["template_path"]))
    return True
