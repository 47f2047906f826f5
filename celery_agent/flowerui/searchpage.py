"""The searches pages: the recent searches, and one search with its trials and objective chart.

``/celery-agent/searches`` and ``/celery-agent/searches/SEARCH_ID``; the chart is drawn in the
browser from the search's JSON (the same as ``/celery-agent/api/searches/SEARCH_ID`` serves).
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

from flower.views import BaseHandler
from tornado import web

from ..app import get_store
from ..errors import AgentError
from .base import blocking
from .chartapi import guarded, status_of
from .comparepage import PATH as COMPARE_PATH
from .comparison import MAX_RUNS
from .document import base_of, cell, document, error_page
from .searches import search_detail, search_list

PATH = "/celery-agent/searches"
#: a running search's page reloads itself this often (seconds)
REFRESH_S = 5

#: the objective per trial (markers) and the best so far (a step line)
SCRIPT = """
var data = JSON.parse(document.getElementById('ca-data').textContent);
CeleryAgentCharts.line('objective-chart', {
  title: data.objective + ' (' + data.direction + ')', xLabel: 'trial',
  empty: 'No trial has reported ' + data.objective + ' yet.',
  series: [{label: 'trial', points: data.objective_points, markers: true, line: false},
           {label: 'best so far', points: data.best_so_far, step: true}]
});
document.querySelectorAll('[data-param]').forEach(function (box) {
  var p = data.param_points[box.dataset.param];
  CeleryAgentCharts.line(box, {title: data.objective + ' by ' + p.x, xLabel: p.x,
    series: [{label: 'trial', points: p.points, markers: true, line: false}]});
});
"""


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _run_link(base: str, run_id: str | None) -> str:
    if not run_id:
        return "<span class='muted'>-</span>"
    return f"<a href='{base}/celery-agent/runs/{escape(run_id)}'>{escape(run_id[:12])}</a>"


def render_list(searches: list[dict[str, Any]], base: str) -> str:
    """The page listing ``searches`` (see :func:`.searches.search_list`)."""
    head = "".join(f"<th>{h}</th>" for h in ("search", "objective", "sampler", "state", "trials",
                                              "best", "best run", "started"))  # fmt: skip
    rows = "".join(
        f"<tr><td><a href='{base}{PATH}/{escape(s['id'])}'>{escape(s['id'])}</a></td>"
        f"<td>{cell(s['objective'])} ({cell(s['direction'])})</td><td>{cell(s['sampler'])}</td>"
        f"<td>{cell(s['state'])}</td><td class='num'>{s['trials']}</td>"
        f"<td class='num'>{cell(s['best_value'])}</td><td>{_run_link(base, s['best_run'])}</td>"
        f"<td>{_when(s['started_at'])}</td></tr>"
        for s in searches
    )
    table = f"<table><tr>{head}</tr>{rows}</table>" if searches else (
        "<p class='muted'>No search is recorded. Start one with <code>celery-agent search</code>.</p>"
    )  # fmt: skip
    return document(
        "Searches", f"<h1>Searches</h1><section>{table}</section>", base, here="Searches"
    )


def render_search(data: dict[str, Any], base: str) -> str:
    """The page of one search (see :func:`.searches.search_detail`)."""
    counts = ", ".join(f"{n} {state}" for state, n in sorted(data["counts"].items())) or "none"
    best = data.get("best") or {}
    facts = (
        f"<p>objective <b>{cell(data['objective'])}</b> ({cell(data['direction'])}) &middot; "
        f"sampler {cell(data['sampler'])} &middot; state <b>{cell(data['state'])}</b> &middot; "
        f"trials: {escape(counts)} &middot; started {_when(data['started_at'])}"
        f"{' &middot; finished ' + _when(data['finished_at']) if data['finished_at'] else ''}</p>"
        f"<p>best: {cell(best.get('value'))} (trial {cell(best.get('number'))}, run "
        f"{_run_link(base, best.get('run_id'))}) &middot; space: "
        + ", ".join(f"<code>{escape(k)}={escape(v)}</code>" for k, v in data["space"].items())
        + "</p>"
    )
    ranked = [t["run_id"] for t in data["trials"] if t.get("run_id") and t["value"] is not None]
    if len(ranked) >= 2:
        ids = ",".join(ranked[:MAX_RUNS])
        facts += (f"<p><a href='{base}{COMPARE_PATH}?ids={escape(ids, quote=True)}'>Compare the "
                  f"{min(len(ranked), MAX_RUNS)} best trials' runs</a></p>")  # fmt: skip
    body = (
        f"<h1>Search {escape(data['id'])}</h1><section>{facts}</section>"
        f"<section><div id='objective-chart'></div>{_param_charts(data)}</section>"
        f"<section><h2>Trials</h2>{_trials(data, base)}</section>"
    )
    keys = ("objective", "direction", "objective_points", "best_so_far", "param_points")
    chart = {k: data[k] for k in keys}
    live = REFRESH_S if data["state"] == "running" else 0
    return document(f"Search {data['id']}", body, base, chart, SCRIPT, "Searches", live)


def _param_charts(data: dict[str, Any]) -> str:
    """One chart of the objective per numeric parameter (drawn by SCRIPT)."""
    boxes = "".join(
        f"<div data-param='{escape(name, quote=True)}'></div>" for name in data["param_points"]
    )
    return f"<div class='charts'>{boxes}</div>" if boxes else ""


def _trials(data: dict[str, Any], base: str) -> str:
    names = list(data["space"])
    head = "".join(f"<th>{escape(h)}</th>" for h in ("rank", "trial", data["objective"], *names,
                                                      "state", "run"))  # fmt: skip
    rows = []
    for rank, t in enumerate(data["trials"], 1):
        state = t["state"] + (f": {t['error']}" if t.get("error") else "")
        params = "".join(f"<td class='num'>{cell(t['params'].get(n))}</td>" for n in names)
        rows.append(
            f"<tr data-trial='{t['number']}'><td class='num'>{rank if t['value'] is not None else ''}"
            f"</td><td class='num'>{t['number']}</td><td class='num'>{cell(t['value'])}</td>"
            f"{params}<td>{escape(state)}</td><td>{_run_link(base, t['run_id'])}</td></tr>"
        )
    if not rows:
        return "<p class='muted'>No trial has started yet.</p>"
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


class SearchesView(BaseHandler):
    """The list of recent searches (Flower's authentication applies)."""

    @web.authenticated
    async def get(self) -> None:
        """Render the list."""
        base = base_of(self.application.options.url_prefix)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        try:
            searches = await blocking(guarded(lambda: search_list(get_store())))
        except AgentError as err:
            self.set_status(status_of(err))
            self.write(error_page("Searches", str(err), base))
            return
        self.write(render_list(searches, base))


class SearchView(BaseHandler):
    """One search's page; a 404 page that says so for an unknown id."""

    @web.authenticated
    async def get(self, search_id: str) -> None:
        """Render the search."""
        base = base_of(self.application.options.url_prefix)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        try:
            data = await blocking(guarded(lambda: search_detail(get_store(), search_id)))
        except AgentError as err:
            self.set_status(status_of(err))
            self.write(error_page("Search", str(err), base, f"<a href='{base}{PATH}'>All searches</a>"))  # fmt: skip
            return
        self.write(render_search(data, base))
