"""The data behind the charts, compare and searches pages, and the pages' HTML (no services)."""

from __future__ import annotations

import json
import math
import random
from array import array

import pytest
import redis

from celery_agent.embedded import free_port
from celery_agent.errors import RequestError, StateError, UnknownRunError
from celery_agent.flowerui.assets import asset
from celery_agent.flowerui.chartapi import guarded, status_of
from celery_agent.flowerui.comparepage import form, render_compare
from celery_agent.flowerui.comparison import parse_refs, rows
from celery_agent.flowerui.document import document, to_json
from celery_agent.flowerui.searches import param_points
from celery_agent.flowerui.searchpage import render_list, render_search
from celery_agent.flowerui.series import MAX_POINTS, Series, clamp_limit, picks


def _series(entries):
    out = Series()
    for step, value in entries:
        out.add(step, value)
    return out


def test_unstepped_values_get_their_position_and_non_finite_values_are_null():
    got = _series([("", "1.5"), ("", "nan"), ("7", "inf"), ("9", "2.0"), ("", "-inf")])
    assert got.pairs() == [[0, 1.5], [1, None], [7, None], [9, 2.0], [4, None]]


def test_a_short_series_is_served_whole():
    series = _series([(str(i), str(i / 3)) for i in range(MAX_POINTS)])
    assert series.pairs(MAX_POINTS) == [[i, i / 3] for i in range(MAX_POINTS)]


def test_downsampling_keeps_the_ends_and_every_spike_within_the_limit():
    rng = random.Random(4)
    values = [rng.random() for _ in range(100_000)]
    values[31_337], values[77_001] = 50.0, -50.0
    out = _series([(str(i), repr(v)) for i, v in enumerate(values)]).pairs(500)
    assert 490 <= len(out) <= 500
    assert out[0] == [0, values[0]] and out[-1] == [99_999, values[-1]]
    assert [31_337, 50.0] in out and [77_001, -50.0] in out
    steps = [p[0] for p in out]
    assert steps == sorted(set(steps))  # in order, no point twice


def test_downsampling_skips_gaps_and_keeps_one_point_of_a_bucket_of_gaps():
    values = array("d", [math.nan] * 5000)
    values[2500] = 3.0
    kept = picks(values, 100)
    assert kept[0] == 0 and kept[-1] == 4999 and 2500 in kept and len(kept) == 51


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
            "best_so_far": [[1, 0.9]], "param_points": {"lr": {"x": "lr", "points": [[0.5, 0.9]]}}}  # fmt: skip


def test_the_search_page_lists_every_trial_with_params_objective_and_state():
    html = render_search(_search(), "")
    assert "data-trial='1'" in html and "data-trial='0'" in html
    assert "<td class='num'>0.9</td><td class='num'>0.5</td><td>done</td>" in html
    assert "failed: run failed" in html and "id='objective-chart'" in html
    assert "<div data-param='lr'></div>" in html


def test_the_searches_list_links_each_search():
    row = {"id": "s1", "objective": "acc", "direction": "max", "sampler": "grid", "state": "running",
           "trials": 3, "best_value": None, "best_run": None, "started_at": 0.0}  # fmt: skip
    html = render_list([row], "/p")
    assert "href='/p/celery-agent/searches/s1'" in html and "<td class='num'>3</td>" in html
    assert "No search is recorded" in render_list([], "")


def test_each_bucket_keeps_its_lowest_and_highest_value():
    # picks() takes min/max at C speed when a bucket has no NaN; it must pick what a scan picks
    rng = random.Random(9)
    values = array("d", [rng.uniform(-1, 1) for _ in range(30_000)])
    kept = picks(values, 202)
    size = (len(values) - 2) / 100
    for b in range(100):
        a, z = 1 + round(b * size), 1 + round((b + 1) * size)
        bucket = range(a, z)
        lo = min(bucket, key=values.__getitem__)
        hi = max(bucket, key=values.__getitem__)
        assert lo in kept and hi in kept


def test_the_compare_form_offers_the_recent_runs_to_tick():
    recent = [{"run_id": "abc123456789ffff", "name": "<x>", "state": "failed", "queue": "gpu",
               "submitted_at": 0.0}]  # fmt: skip
    html = form("/p", "a1,b2", recent)
    assert "action='/p/celery-agent/compare'" in html and "value='a1,b2'" in html
    assert "<input type='checkbox' name='ids' value='abc123456789ffff'>" in html
    assert "&lt;x&gt;" in html and "s-failed" in html
    assert "<table" not in form("", "", [])


def test_a_search_page_links_its_best_trials_to_compare_and_reloads_while_running():
    data = _search()
    data["trials"][1] |= {"state": "done", "value": 0.5, "error": ""}
    html = render_search(data | {"state": "running"}, "")
    assert "href='/celery-agent/compare?ids=r1,r0'>Compare the 2 best trials" in html
    assert "http-equiv='refresh'" in html
    assert "http-equiv" not in render_search(_search(), "") and "Compare the" not in render_search(
        _search(), ""
    )


def test_redis_that_does_not_answer_is_a_state_error_answered_with_503():
    client = redis.Redis(port=free_port(), socket_connect_timeout=1)  # nothing listens there
    with pytest.raises(StateError) as err:
        guarded(lambda: client.get("x"))()
    assert (
        "Redis did not answer" in err.value.message and "CELERY_AGENT_REDIS_URL" in err.value.hint
    )
    assert status_of(err.value) == 503
    assert status_of(UnknownRunError("x")) == 404 and status_of(RequestError("x")) == 400


def test_param_charts_cover_numeric_params_with_loguniform_ones_on_a_log_axis():
    space = {"lr": "loguniform:1e-4:1", "depth": "int:1:9", "opt": "choice:sgd,adam",
             "flag": "choice:true,false"}  # fmt: skip
    params = [{"lr": 0.01, "depth": 3, "opt": "sgd", "flag": True},
              {"lr": 0.1, "depth": 5, "opt": "adam", "flag": False}]  # fmt: skip
    got = param_points(space, params, [0.5, 0.75])
    assert got == {
        "lr": {"x": "log10(lr)", "points": [[-2.0, 0.5], [-1.0, 0.75]]},
        "depth": {"x": "depth", "points": [[3.0, 0.5], [5.0, 0.75]]},
    }
