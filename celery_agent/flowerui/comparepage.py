"""The compare page: 2 to 10 runs side by side, differing rows marked, metric curves overlaid.

``/celery-agent/compare?ids=a,b,...`` (ids, unique id prefixes or names; ``ids`` may also be given
several times, as the form's ticked runs are); without ``ids``, a form to pick recent runs.
The tables are HTML; the charts are drawn in the browser from the comparison's JSON (the same as
``/celery-agent/api/compare`` serves), embedded in the page.
"""

from __future__ import annotations

import time
from html import escape
from typing import TYPE_CHECKING, Any

from flower.views import BaseHandler
from tornado import web

from ..app import get_store
from ..errors import AgentError
from ..runindex import RunQuery, page
from .base import blocking
from .chartapi import guarded, status_of
from .comparison import MAX_RUNS, MIN_RUNS, compare_data
from .document import base_of, cell, document, error_page

if TYPE_CHECKING:
    from ..state import RunStore

PATH = "/celery-agent/compare"
#: recent runs the form offers to pick from
PICKED = 50

#: draws one chart per metric, each run in the color of its column
SCRIPT = """
var data = JSON.parse(document.getElementById('ca-data').textContent);
var C = window.CeleryAgentCharts;
document.querySelectorAll('[data-run-index]').forEach(function (th) {
  th.style.borderTop = '4px solid ' + C.colors[+th.dataset.runIndex % C.colors.length];
});
document.querySelectorAll('[data-metric]').forEach(function (box) {
  var per = data.metrics[box.dataset.metric] || {};
  var series = [];
  data.runs.forEach(function (run, i) {
    if (!per[run.id]) return;
    series.push({label: run.id.slice(0, 8) + (run.name ? ' ' + run.name : ''), points: per[run.id],
                 color: C.colors[i % C.colors.length]});
  });
  C.line(box, {title: box.dataset.metric, xLabel: 'step', series: series});
});
"""


def form(base: str, given: str = "", recent: list[dict[str, Any]] | None = None) -> str:
    """The form that asks for the runs to compare: typed ids, or ticked among the ``recent`` runs
    (rows of :func:`..runindex.page`)."""
    rows = "".join(
        f"<tr><td><input type='checkbox' name='ids' value='{escape(r['run_id'], quote=True)}'></td>"
        f"<td><code>{escape(r['run_id'][:12])}</code></td><td>{escape(r['name'])}</td>"
        f"<td><span class='pill s-{escape(r['state'])}'>{escape(r['state'])}</span></td>"
        f"<td>{escape(r['queue'])}</td><td>{_when(r['submitted_at'])}</td></tr>"
        for r in recent or []
    )
    head = "".join(f"<th>{h}</th>" for h in ("", "run", "name", "state", "queue", "submitted"))
    table = f"<table class='pick'><tr>{head}</tr>{rows}</table>" if rows else ""
    return (
        f"<form method='get' action='{base}{PATH}'><p>Tick {MIN_RUNS} to {MAX_RUNS} runs, or type"
        " their ids, unique id prefixes or names (comma-separated):</p>"
        f"<input name='ids' size='80' value='{escape(given, quote=True)}'> "
        f"<button type='submit'>Compare</button>{table}</form>"
    )


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def recent_runs(store: RunStore, name: str = "", limit: int = PICKED) -> list[dict[str, Any]]:
    """The newest runs to pick from (only those whose name contains ``name`` when given)."""
    query = RunQuery(filters={"name": name} if name else {}, limit=limit)
    return list(page(store, query)["runs"])


def render_compare(data: dict[str, Any], base: str) -> str:
    """The page for ``data`` (see :func:`.comparison.compare_data`)."""
    runs = data["runs"]
    head = "".join(
        f"<th data-run-index='{i}'><a href='{base}/celery-agent/runs/{escape(r['id'])}'>"
        f"{escape(r['id'][:12])}</a><div class='muted'>{escape(r['name'])}</div></th>"
        for i, r in enumerate(runs)
    )
    span = len(runs) + 1
    table = (
        f"<table class='compare'><tr><th></th>{head}</tr>"
        f"<tr><th colspan='{span}'>run</th></tr>{_rows(data['fields'])}"
        f"<tr><th colspan='{span}'>params</th></tr>"
        f"{_rows(data['params']) or _none(span, 'No run has params.')}</table>"
    )
    differ = sum(r["differs"] for r in data["params"])
    charts = "".join(
        f"<div class='chart' data-metric='{escape(name, quote=True)}'></div>"
        for name in data["metrics"]
    )
    body = (
        f"<h1>Compare {len(runs)} runs</h1><section><h2>Settings and params</h2>"
        f"<p class='muted'>{differ} param(s) differ; rows that differ are marked.</p>{table}</section>"
        f"<section><h2>Metrics</h2><div class='charts'>{charts}</div>"
        f"{'' if charts else '<p class=muted>None of these runs reported a metric.</p>'}</section>"
    )
    page_data = {"runs": runs, "metrics": data["metrics"]}
    return document(f"Compare {len(runs)} runs", body, base, page_data, SCRIPT, here="Runs")


def _rows(rows: list[dict[str, Any]]) -> str:
    return "".join(
        f"<tr{' class=differs data-differs=1' if row['differs'] else ''}>"
        f"<td>{escape(row['name'])}{' &ne;' if row['differs'] else ''}</td>"
        + "".join(f"<td>{cell(v)}</td>" for v in row["values"])
        + "</tr>"
        for row in rows
    )


def _none(span: int, text: str) -> str:
    return f"<tr><td colspan='{span}' class='muted'>{escape(text)}</td></tr>"


class CompareView(BaseHandler):
    """The compare page (Flower's authentication applies)."""

    @web.authenticated
    async def get(self) -> None:
        """Render the comparison, or the form to pick runs (with the error, if any)."""
        base = base_of(self.application.options.url_prefix)
        refs = [r for r in self.get_arguments("ids", strip=True) if r]  # (typed and ticked)
        given = ",".join(refs)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        try:
            if not refs:
                recent = await blocking(guarded(lambda: recent_runs(get_store())))
                body = f"<h1>Compare runs</h1><section>{form(base, '', recent)}</section>"
                self.write(document("Compare runs", body, base, here="Runs"))
                return
            data = await blocking(guarded(lambda: compare_data(get_store(), given)))
        except AgentError as err:
            self.set_status(status_of(err))
            self.write(
                error_page("Compare runs", str(err), base, form(base, given, await self._recent()))
            )
            return
        self.write(render_compare(data, base))

    async def _recent(self) -> list[dict[str, Any]]:
        """The runs to pick from; none when they cannot be read (the error says why)."""
        try:
            return await blocking(guarded(lambda: recent_runs(get_store())))
        except AgentError:
            return []
