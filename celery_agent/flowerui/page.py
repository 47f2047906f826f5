"""The hardware page as one self-contained HTML document: no script, no external files.

Charts are inline SVG polylines on a 0-100 % scale; the page refreshes itself every few seconds.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

REFRESH_S = 5
GIB = 2**30
COLORS = ("#2b7bb9", "#d9822b", "#3f9c35", "#b23b8c", "#7a5cc6", "#c23030")

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1c2127}
header{background:#1c2127;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:center}
header a{color:#cfd8e3;text-decoration:none}
main{padding:16px 20px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:12px 16px;margin:0 0 16px}
h2{font-size:1.1em;margin:0 0 8px}
table{border-collapse:collapse;width:100%;font-size:.9em}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef0f2}
.bar{display:inline-block;width:120px;height:10px;background:#eef0f2;border-radius:3px;
vertical-align:middle;margin-right:6px}
.bar i{display:block;height:100%;background:#2b7bb9;border-radius:3px}
.online{color:#3f9c35}.lost{color:#c23030}.stopped{color:#738091}
.muted{color:#738091}
"""


def render_page(data: dict[str, Any], url_prefix: str = "") -> str:
    """The whole page for ``data`` (see :func:`celery_agent.flower.hardware_data`)."""
    base = "/" + url_prefix.strip("/") if url_prefix.strip("/") else ""
    body = [_gpu_section(data["gpus"])] if data["gpus"] else []
    body += [_worker_section(w) for w in data["workers"]] or ["<p>No worker has reported.</p>"]
    body.append(_users_section(data.get("users") or [], data.get("quotas") or []))
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(data["at"]))
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<meta http-equiv='refresh' content='{REFRESH_S}'>"
        f"<title>Hardware - celery-agent</title><style>{STYLE}</style></head><body>"
        f"<header><strong>celery-agent hardware</strong><a href='{base}/workers'>Workers</a>"
        f"<a href='{base}/tasks'>Tasks</a><a href='{base}/celery-agent/runs'>Runs</a>"
        f"<a href='{base}/celery-agent/searches'>Searches</a>"
        f"<a href='{base}/celery-agent/api/hardware'>JSON</a>"
        f"<span class='muted'>as of {at}</span></header><main>{''.join(body)}</main></body></html>"
    )


def _worker_section(w: dict[str, Any]) -> str:
    queues = escape(", ".join(w["queues"])) or "-"
    gpus = f"{w.get('gpu_mode') or ''} {','.join(str(i) for i in w['gpus'])}".strip() or "-"
    head = (
        f"<h2>{escape(w['name'])} <span class='{escape(w['state'])}'>{escape(w['state'])}</span>"
        f"</h2><p class='muted'>host {escape(str(w['host'] or '-'))} &middot; queues {queues}"
        f" &middot; GPUs {escape(gpus)} &middot; CPU {_num(w['cpu_percent'])} %"
        f" &middot; memory {_num(w['memory_percent'])} %</p>"
    )
    return f"<section>{head}{_runs_table(w.get('current') or [])}{history_chart(w)}</section>"


def _users_section(users: list[dict[str, Any]], quotas: list[dict[str, Any]]) -> str:
    """Runs waiting and running per user, and each quota against what it holds now (as
    `celery-agent status` shows them)."""
    if not users and not quotas:
        return ""
    rows = "".join(
        f"<tr><td>{escape(str(u['user']))}</td><td>{u['queued']}</td><td>{u['active']}</td></tr>"
        for u in users
    )
    out = "<section><h2>Users</h2>"
    if users:
        out += f"<table><tr><th>user</th><th>waiting</th><th>running</th></tr>{rows}</table>"
    if quotas:
        out += "<table><tr><th>quota</th><th>queue</th><th>runs</th><th>GPUs</th></tr>"
        out += "".join(_quota_row(q) for q in quotas) + "</table>"
    return out + "</section>"


def _quota_row(q: dict[str, Any]) -> str:
    who, limits = f"{q['kind']} {q[q['kind']]}", q["limits"]
    used = [f"{q[k]}" + (f"/{limits[k]}" if k in limits else "") for k in ("runs", "gpus")]
    return (f"<tr><td>{escape(who)}</td><td>{escape(str(q['queue'] or '(all)'))}</td>"
            f"<td>{used[0]}</td><td>{used[1]}</td></tr>")  # fmt: skip


def _runs_table(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "<p class='muted'>No run right now.</p>"
    rows = "".join(
        f"<tr><td>{escape(r['id'][:12])}</td><td>{escape(str(r['name'] or '-'))}</td>"
        f"<td>{escape(str(r['state'] or '-'))}</td></tr>"
        for r in runs
    )
    return f"<table><tr><th>run</th><th>name</th><th>state</th></tr>{rows}</table>"


def _gpu_section(gpus: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{escape(g['host'])}</td><td>{g['index']}</td><td>{escape(g['name'] or '')}</td>"
        f"<td>{_bar(g['util'], 100)}</td><td>{_bar(g['memory_used'], g['memory_total'])}"
        f"{_memory(g)}</td><td>{_num(g['temperature'])} &deg;C</td>"
        f"<td>{_num(g['power_w'])} W</td><td>{escape(', '.join(g['workers']) or '-')}</td></tr>"
        for g in gpus
    )
    head = "".join(f"<th>{h}</th>" for h in ("host", "gpu", "name", "util", "memory", "temp",
                                              "power", "worker"))  # fmt: skip
    return f"<section><h2>GPUs</h2><table><tr>{head}</tr>{rows}</table></section>"


def history_chart(w: dict[str, Any], width: int = 560, height: int = 120) -> str:
    """An SVG line chart of the worker's CPU %, memory % and each GPU's utilization %."""
    points = w.get("history") or []
    if len(points) < 2:
        return "<p class='muted'>History: waiting for heartbeats.</p>"
    series = {"cpu %": [p.get("cpu") for p in points], "memory %": [p.get("mem") for p in points]}
    for i, gpu in enumerate(points[-1].get("gpus") or []):
        series[f"gpu {gpu.get('uuid', '')[:8]} util %"] = [_gpu_util(p, i) for p in points]
    lines, legend = [], []
    for (label, values), color in zip(series.items(), COLORS * 4, strict=False):
        lines.append(_polyline(values, width, height, color))
        legend.append(f"<span style='color:{color}'>&#9632; {escape(label)}</span>")
    grid = "".join(
        f"<line x1='0' x2='{width}' y1='{y}' y2='{y}' stroke='#eef0f2'/>"
        for y in (0, height // 2, height)
    )
    svg = (
        f"<svg role='img' aria-label='history of {escape(w['name'])}' width='{width}' "
        f"height='{height}' viewBox='0 0 {width} {height}' style='background:#fafbfc'>"
        f"{grid}{''.join(lines)}</svg>"
    )
    return f"<div>{svg}<div class='muted'>{' &nbsp; '.join(legend)} (0-100 %)</div></div>"


def _polyline(values: list[float | None], width: int, height: int, color: str) -> str:
    step = width / max(1, len(values) - 1)
    coords = " ".join(
        f"{i * step:.1f},{height - max(0.0, min(100.0, v)) / 100 * height:.1f}"
        for i, v in enumerate(values)
        if v is not None
    )
    return f"<polyline fill='none' stroke='{color}' stroke-width='1.5' points='{coords}'/>"


def _gpu_util(point: dict[str, Any], i: int) -> float | None:
    gpus = point.get("gpus") or []
    return gpus[i].get("util") if i < len(gpus) else None


def _bar(value: float | None, total: float | None) -> str:
    if value is None or not total:
        return "-"
    pct = max(0.0, min(100.0, value / total * 100))
    return f"<span class='bar'><i style='width:{pct:.0f}%'></i></span>{pct:.0f} %"


def _memory(g: dict[str, Any]) -> str:
    used, total = g["memory_used"], g["memory_total"]
    if used is None or not total:
        return ""
    return f" <span class='muted'>{used / GIB:.1f}/{total / GIB:.0f} GiB</span>"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
