"""The data behind the charts, compare and searches pages, and the pages' HTML (no services)."""

from __future__ import annotations

import json
import math
import random

import pytest

from celery_agent.errors import RequestError
from celery_agent.flowerui.assets import asset
from celery_agent.flowerui.comparepage import render_compare
from celery_agent.flowerui.comparison import parse_refs, rows
from celery_agent.flowerui.document import document, to_json
from celery_agent.flowerui.searchpage import render_list, render_search
from celery_agent.flowerui.series import MAX_POINTS, clamp_limit, downsample, pairs
from celery_agent.metrics import Point


def test_pairs_give_unstepped_values_their_position_and_non_finite_values_null():
    points = [
        Point(None, 1.5, 0),
        Point(None, math.nan, 0),
        Point(7, math.inf, 0),
        Point(9, 2.0, 0),
    ]
    assert pairs(points) == [[0, 1.5], [1, None], [7, None], [9, 2.0]]


def test_a_short_series_is_served_whole():
    series = [[i, float(i)] for i in range(MAX_POINTS)]
    assert downsample(series) is series


def test_downsampling_keeps_the_ends_and_every_spike_within_the_limit():
    rng = random.Random(4)
    series = [[i, rng.random()] for i in range(100_000)]
    series[31_337][1], series[77_001][1] = 50.0, -50.0
    out = downsample(series, 500)
    assert len(out) <= 500 and len(out) >= 490
    assert out[0] == [0, series[0][1]] and out[-1] == [99_999, series[-1][1]]
    assert [31_337, 50.0] in out and [77_001, -50.0] in out
    steps = [p[0] for p in out]
    assert steps == sorted(set(steps))  # in order, no point twice


def test_downsampling_a_series_of_gaps_keeps_one_point_per_bucket():
    out = downsample([[i, None] for i in range(5000)], 100)
    assert out[0] == [0, None] and out[-1] == [4999, None] and len(out) == 51


def test_limits_are_clamped():
    assert clamp_limit(None) == MAX_POINTS and clamp_limit(1) == 10 and clamp_limit(10**9) == 20_000


@pytest.mark.parametrize("text", [None, "", "abc", "a,a,a", ",".join(f"r{i}" for i in range(11))])
def test_a_comparison_of_fewer_than_two_or_more_than_ten_runs_is_refused(text):
    with pytest.raises(RequestError) as err:
        parse_refs(text)
    assert "2 to 10" in str(err.value) and "ids=" in str(err.value)


def test_refs_are_split_on_commas_and_spaces_in_order():
    assert parse_refs("b1, a2  c3,,b1") == ["b1", "a2", "c3"]


def test_rows_mark_a_param_that_differs_or_that_only_some_runs_have():
    got = rows(
        ["lr", "seed", "extra"], [{"lr": 0.1, "seed": 1}, {"lr": 0.2, "seed": 1, "extra": None}]
    )
    assert got == [
        {"name": "lr", "values": [0.1, 0.2], "differs": True},
        {"name": "seed", "values": [1, 1], "differs": False},
        {"name": "extra", "values": [None, None], "differs": True},
    ]


def test_json_has_no_nan_and_cannot_close_the_script_tag():
    assert json.loads(to_json({"v": [math.nan, 1.0, -math.inf]})) == {"v": [None, 1.0, None]}
    page = document("t", "", "", {"name": "</script><script>alert(1)</script>"}, "x()")
    assert page.count("</script>") == 3  # the data's, the chart script's, the page script's
    assert "\\u003c/script>\\u003cscript>alert(1)" in page


def test_the_chart_script_is_package_data_and_only_static_names_are_served():
    assert "CeleryAgentCharts" in asset("charts.js")
    for name in ("../flower.py", "__init__.py", ".hidden.js", "nothere.js"):
        with pytest.raises(FileNotFoundError):
            asset(name)


def _comparison():
    runs = [{"id": "aaaa1111", "name": "<i>a</i>", "state": "succeeded"},
            {"id": "bbbb2222", "name": "b", "state": "failed"}]  # fmt: skip
    return {
        "runs": runs,
        "fields": rows(["entry"], [{"entry": "train.py"}, {"entry": "train.py"}]),
        "params": rows(["lr", "seed"], [{"lr": 0.1, "seed": 1}, {"lr": 0.2, "seed": 1}]),
        "metrics": {"loss": {"aaaa1111": [[0, 1.0]], "bbbb2222": [[0, 2.0]]}},
    }


def test_the_compare_page_marks_the_differing_param_row_only():
    html = render_compare(_comparison(), "/flower")
    marked = [row for row in html.split("<tr") if "data-differs" in row]
    assert len(marked) == 1 and "<td>lr &ne;</td><td>0.1</td><td>0.2</td>" in marked[0]
    assert "/flower/celery-agent/runs/aaaa1111" in html and "&lt;i&gt;a&lt;/i&gt;" in html
    assert "data-metric='loss'" in html and "/flower/celery-agent/static/charts.js" in html


def _search():
    trials = [{"number": 1, "params": {"lr": 0.5}, "run_id": "r1", "state": "done", "value": 0.9,
               "run_state": "succeeded", "error": ""},
              {"number": 0, "params": {"lr": 0.1}, "run_id": "r0", "state": "failed", "value": None,
               "run_state": "failed", "error": "run failed"}]  # fmt: skip
    return {"id": "s1", "objective": "acc", "direction": "max", "sampler": "grid",
            "space": {"lr": "choice:0.1,0.5"}, "trials": trials, "state": "finished",
            "out_dir": "", "best": trials[0], "started_at": 0.0, "finished_at": 1.0,
            "counts": {"done": 1, "failed": 1}, "objective_points": [[1, 0.9]],
            "best_so_far": [[1, 0.9]]}  # fmt: skip


def test_the_search_page_lists_every_trial_with_params_objective_and_state():
    html = render_search(_search(), "")
    assert "data-trial='1'" in html and "data-trial='0'" in html
    assert "<td class='num'>0.9</td><td class='num'>0.5</td><td>done</td>" in html
    assert "failed: run failed" in html and "id='objective-chart'" in html


def test_the_searches_list_links_each_search():
    row = {"id": "s1", "objective": "acc", "direction": "max", "sampler": "grid", "state": "running",
           "trials": 3, "best_value": None, "best_run": None, "started_at": 0.0}  # fmt: skip
    html = render_list([row], "/p")
    assert "href='/p/celery-agent/searches/s1'" in html and "<td class='num'>3</td>" in html
    assert "No search is recorded" in render_list([], "")
