"""The HTML page around each celery-agent page: head, styles, navigation bar, body."""

from __future__ import annotations

import json
import math
from html import escape
from typing import Any

from .assets import url

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1c2127}
header{background:#1c2127;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:center}
header a{color:#cfd8e3;text-decoration:none}
main{padding:16px 20px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:12px 16px;margin:0 0 16px}
h1{font-size:1.25em;margin:0 0 12px}h2{font-size:1.1em;margin:0 0 8px}
table{border-collapse:collapse;width:100%;font-size:.9em}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef0f2;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.differs td{background:#fff6df}tr.differs td:first-child{box-shadow:inset 3px 0 #d9822b}
.muted{color:#738091}.error{color:#c23030;font-weight:600}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:8px 20px}
code{font-size:.95em}
"""


def base_of(url_prefix: str | None) -> str:
    """The path every link starts with: "" or "/prefix" (Flower's --url_prefix)."""
    prefix = (url_prefix or "").strip("/")
    return "/" + prefix if prefix else ""


def document(title: str, body: str, base: str, data: Any = None, script: str = "") -> str:
    """A whole page: ``body`` under the navigation bar; ``data`` (JSON) in a
    ``<script id="ca-data">`` for ``script`` to read; the chart script loaded when ``script`` is."""
    nav = "".join(
        f"<a href='{base}{path}'>{label}</a>"
        for label, path in (("Flower", "/workers"), ("Runs", "/celery-agent/runs"),
                            ("Searches", "/celery-agent/searches"),
                            ("Hardware", "/celery-agent/hardware"))
    )  # fmt: skip
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
        f"<title>{escape(title)} - celery-agent</title><style>{STYLE}</style></head><body>"
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
