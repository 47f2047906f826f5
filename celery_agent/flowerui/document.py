"""The HTML page around each celery-agent page: head, styles, navigation bar, body."""

from __future__ import annotations

import json
import math
from html import escape
from typing import Any

from .assets import url

#: what these pages add to the shared ui.css
STYLE = """
tr.differs td{background:#fff6df}tr.differs td:first-child{box-shadow:inset 3px 0 #d9822b}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:8px 20px}
"""
#: the navigation bar: (label, path)
NAV = (("Workers", "/workers"), ("Tasks", "/tasks"), ("Runs", "/celery-agent/runs"),
       ("Hardware", "/celery-agent/hardware"), ("Searches", "/celery-agent/searches"))  # fmt: skip


def base_of(url_prefix: str | None) -> str:
    """The path every link starts with: "" or "/prefix" (Flower's --url_prefix)."""
    prefix = (url_prefix or "").strip("/")
    return "/" + prefix if prefix else ""


def document(
    title: str,
    body: str,
    base: str,
    data: Any = None,
    script: str = "",
    here: str = "",
    refresh: int = 0,
) -> str:
    """A whole page: ``body`` under the navigation bar (``here``: the label marked as current);
    ``data`` (JSON) in a ``<script id="ca-data">`` for ``script`` to read; the chart script loaded
    when ``script`` is; reloaded every ``refresh`` seconds when given."""
    nav = "".join(
        f"<a{' class=on' if label == here else ''} href='{base}{path}'>{label}</a>"
        for label, path in NAV
    )
    embedded = ""
    if data is not None:
        text = to_json(data).replace("<", "\\u003c")
        embedded = f"<script type='application/json' id='ca-data'>{text}</script>"
    scripts = (
        f"<script src='{url(base, 'charts.js')}'></script><script>{script}</script>"
        if script
        else ""
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        + (f"<meta http-equiv='refresh' content='{refresh}'>" if refresh else "")
        + f"<title>{escape(title)} - celery-agent</title>"
        f"<link rel='stylesheet' href='{url(base, 'ui.css')}'><style>{STYLE}</style></head><body>"
        f"<header><strong>celery-agent</strong>{nav}</header><main>{body}</main>"
        f"{embedded}{scripts}</body></html>"
    )


def to_json(data: Any) -> str:
    """``data`` as strict JSON: NaN and infinities (which JSON cannot carry) become null."""
    return json.dumps(_finite(data), allow_nan=False, default=str)


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(v) for v in data]
    return data


def cell(value: Any) -> str:
    """A value as table cell text, escaped: "-" for None, JSON for lists and dicts, floats short."""
    if value is None:
        return "<span class='muted'>-</span>"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return escape(json.dumps(value, default=str))
    return escape(str(value))


def error_page(title: str, message: str, base: str, extra: str = "") -> str:
    """A page that says what is wrong (and, in ``extra``, what to do instead)."""
    return document(
        title, f"<section><p class='error'>{escape(message)}</p>{extra}</section>", base
    )
