from __future__ import annotations

from celery_agent.flower import HARDWARE_API_PATH, HARDWARE_PATH, _pattern, install_handlers
from celery_agent.flowerui import routes
from celery_agent.flowerui.page import history_chart, render_page


def test_install_handlers_goes_before_the_catch_all_once():
    catch_all = (r".*", object)
    handlers: list = [(r"/", object), catch_all]
    assert install_handlers(handlers) is True
    added = [_pattern(h) for h in handlers[1:-1]]
    assert added[:2] == [HARDWARE_PATH, HARDWARE_API_PATH]
    assert "/celery-agent/runs" in added and "/celery-agent/api/runs" in added
    assert handlers[-1] is catch_all
    assert install_handlers(handlers) is False and len(handlers) == 2 + len(routes())


def _worker(**kw):
    row = {"name": "gpu0@<host>", "host": "h", "state": "online", "queues": ["gpu0"],
           "gpu_mode": "static", "gpus": [0], "cpu_percent": 12.0, "memory_percent": 40.0,
           "current": [{"id": "abcdef1234567890", "name": "<b>x</b>", "state": "running"}],
           "history": [{"cpu": 10, "mem": 20, "gpus": [{"uuid": "GPU-1", "util": 50}]},
                       {"cpu": 90, "mem": 30, "gpus": [{"uuid": "GPU-1", "util": None}]}]}  # fmt: skip
    return row | kw


def test_page_escapes_names_and_draws_one_line_per_series():
    gpu = {"host": "h", "index": 0, "uuid": "GPU-1", "name": "H200", "util": 50,
           "memory_used": 2**30, "memory_total": 2**34, "temperature": 40, "power_w": 100,
           "workers": ["gpu0@<host>"]}  # fmt: skip
    html = render_page({"at": 0, "workers": [_worker()], "gpus": [gpu]}, "flower")
    assert "gpu0@&lt;host&gt;" in html and "<b>x</b>" not in html and "&lt;b&gt;x" in html
    assert html.count("<polyline") == 3 and "href='/flower/tasks'" in html
    assert "1.0/16 GiB" in html and "<script" not in html


def test_chart_waits_for_two_points():
    assert "<svg" not in history_chart(_worker(history=[{"cpu": 1}]))


def test_page_shows_each_users_runs_and_each_quota_against_what_it_holds():
    users = [{"user": "<al>", "queued": 5, "active": 2, "ended": {}}]
    quotas = [{"kind": "user", "user": "<al>", "queue": None, "limits": {"runs": 2},
               "runs": 2, "gpus": 3, "source": "redis"},
              {"kind": "project", "project": "cv", "queue": "gpu0", "limits": {"gpus": 8},
               "runs": 1, "gpus": 4, "source": "settings"}]  # fmt: skip
    html = render_page({"at": 0, "workers": [], "gpus": [], "users": users, "quotas": quotas})
    assert "<td>&lt;al&gt;</td><td>5</td><td>2</td>" in html
    assert "<td>user &lt;al&gt;</td><td>(all)</td><td>2/2</td><td>3</td>" in html
    assert "<td>project cv</td><td>gpu0</td><td>1</td><td>4/8</td>" in html
    assert "Users" not in render_page({"at": 0, "workers": [], "gpus": []})
