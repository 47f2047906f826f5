"""Metric series, compare and searches in a real Flower, from real runs on a real worker, read
through the JSON API and rendered by a real headless Chromium (the ``browser`` fixture, DevTools).
Screenshots go to tests/artifacts/."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from flower_support import ARTIFACTS

from celery_agent import RunHandle, TaskSpec, submit
from celery_agent.flowerui.series import SeriesCache, run_series
from celery_agent.metrics import Metric, append
from celery_agent.search import run_search
from celery_agent.testing import init_repo

pytestmark = pytest.mark.integration

TRAIN = """\
import argparse
from celery_agent.metrics import report
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.5)
p.add_argument("--seed", type=int, default=7)
a = p.parse_args()
for step, loss in enumerate([2.0, 1.5, 1.25, 1.0, 0.75]):
    report("loss", loss + a.lr, step)
report("acc", 0.5 + a.lr)
"""


def _status(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _json(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    status, body = _status(url, headers)
    return status, json.loads(body)


@pytest.fixture(scope="module")
def trained(worker, tmp_path_factory) -> tuple[RunHandle, RunHandle]:
    """Two runs of TRAIN, with lr 0.25 and 0.5 (seed left at its default), both succeeded."""
    repo = tmp_path_factory.mktemp("train") / "repo"
    repo.mkdir()
    init_repo(repo, {"train.py": TRAIN})
    runs = [
        submit(TaskSpec(repo=str(repo), entry="train.py", executor="local", queue=worker.queues,
                        name="train", params={"lr": lr}))
        for lr in (0.25, 0.5)
    ]  # fmt: skip
    for run in runs:
        record = run.wait(90)
        assert record["state"] == "succeeded", record.get("error")
    return runs[0], runs[1]


def _whole_page(browser, path: Path) -> None:
    """A screenshot of the whole page, not only the window."""
    height = browser.eval("document.documentElement.scrollHeight")
    shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                        clip={"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1})  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _drawn(browser, selector: str) -> dict[str, int]:
    """The series the charts under ``selector`` drew: label -> points drawn."""
    return dict(browser.eval(
        f"[...document.querySelectorAll({json.dumps(selector + ' path.ca-series')})]"
        ".map(p => [p.dataset.label, +p.dataset.points])"
    ))  # fmt: skip


def test_metrics_endpoint_returns_the_points_the_run_reported(flower_url, trained):
    run = trained[0]
    status, data = _json(f"{flower_url}/celery-agent/api/runs/{run.id}/metrics")
    assert status == 200 and data["run_id"] == run.id and data["ended"] is True
    assert data["series"] == {
        "loss": [[0, 2.25], [1, 1.75], [2, 1.5], [3, 1.25], [4, 1.0]],
        "acc": [[0, 0.75]],  # reported without a step: its position
    }
    assert data["counts"] == {"loss": 5, "acc": 1} and data["downsampled"] == []
    _, some = _json(f"{flower_url}/celery-agent/api/runs/{run.id[:10]}/metrics?names=acc&points=50")
    assert some["series"] == {"acc": [[0, 0.75]]}
    status, err = _json(f"{flower_url}/celery-agent/api/runs/no-such-run/metrics")
    assert status == 404 and "no-such-run" in err["error"] and err["hint"]


def test_compare_highlights_the_differing_param_and_overlays_the_curves(
    flower_url, trained, browser
):
    a, b = trained
    status, data = _json(f"{flower_url}/celery-agent/api/compare?ids={a.id},{b.id[:10]}")
    assert status == 200 and [r["id"] for r in data["runs"]] == [a.id, b.id]
    params = {row["name"]: row for row in data["params"]}
    assert params["lr"] == {"name": "lr", "values": [0.25, 0.5], "differs": True}
    assert params["seed"]["differs"] is False  # the same default, recorded as the run used it
    assert data["metrics"]["loss"][b.id] == [[0, 2.5], [1, 2.0], [2, 1.75], [3, 1.5], [4, 1.25]]

    browser.open(f"{flower_url}/celery-agent/compare")  # pick them: tick both, submit
    for run in (a, b):
        browser.click(f"input[name=ids][value='{run.id}']")
    browser.click("button[type=submit]")
    browser.wait(
        "document.title.startsWith('Compare 2 runs') && document.readyState === 'complete'"
    )
    heads = browser.eval("[...document.querySelectorAll('th[data-run-index] a')].map(x => x.href)")
    assert sorted(h.rsplit("/", 1)[-1] for h in heads) == sorted([a.id, b.id])
    browser.open(f"{flower_url}/celery-agent/compare?ids={a.id},{b.id}")
    marked = browser.eval("[...document.querySelectorAll('tr.differs')].map(tr =>"
                          " [...tr.cells].map(td => td.textContent.trim()))")  # fmt: skip
    assert marked == [["lr ≠", "0.25", "0.5"]]
    loss = "[data-metric='loss']"
    assert _drawn(browser, loss) == {f"{a.id[:8]} train": 5, f"{b.id[:8]} train": 5}
    tip = browser.eval(  # hover over step 2 of the loss chart: each run's value there
        f"(() => {{ const o = document.querySelector({json.dumps(loss + ' .ca-overlay')});"
        " const r = o.getBoundingClientRect(); o.dispatchEvent(new MouseEvent('mousemove',"
        " {clientX: r.left + r.width / 2, clientY: r.top + 5, bubbles: true}));"
        f" return document.querySelector({json.dumps(loss + ' .ca-tip')}).innerText; }})()"
    )
    assert tip.split("\n") == ["step 2", f"{a.id[:8]} train: 1.5", f"{b.id[:8]} train: 1.75"]
    _whole_page(browser, ARTIFACTS / "flower-compare.png")  # (the tooltip still showing)


def test_compare_refuses_one_run_too_many_runs_and_unknown_ids(flower_url, trained):
    run = trained[0]
    status, err = _json(f"{flower_url}/celery-agent/api/compare?ids={run.id}")
    assert status == 400 and "at least 2 runs, got 1" in err["error"] and "ids=" in err["hint"]
    many = ",".join(f"r{i}" for i in range(11))
    status, err = _json(f"{flower_url}/celery-agent/api/compare?ids={many}")
    assert status == 400 and "at most 10 runs, got 11" in err["error"]
    status, page = _status(f"{flower_url}/celery-agent/compare?ids={run.id},nosuchrun")
    assert status == 404 and "&#x27;nosuchrun&#x27;" in page and "name='ids'" in page


def test_a_search_page_lists_its_trials_and_draws_its_objective(
    flower_url, worker, make_repo, tmp_path, browser
):
    repo = make_repo({"train.py": TRAIN})
    spec = TaskSpec(repo=str(repo), entry="train.py", executor="local", queue=worker.queues)
    sid = f"web-{uuid.uuid4().hex[:6]}"
    result = run_search(spec, ["lr=choice:0.25,0.5"], "acc", "max", trials=2, parallel=2,
                        sampler="grid", out_dir=tmp_path / "out", poll=0.2, search_id=sid)  # fmt: skip
    assert [t.state for t in result.trials] == ["done", "done"]
    _, listed = _json(f"{flower_url}/celery-agent/api/searches")
    row = next(s for s in listed["searches"] if s["id"] == sid)
    assert row["trials"] == 2 and row["best_value"] == 1.0 and row["state"] == "finished"
    _, detail = _json(f"{flower_url}/celery-agent/api/searches/{sid}")
    assert sorted(map(tuple, detail["objective_points"])) == [(0, 0.75), (1, 1.0)]
    assert detail["best_so_far"][-1] == [1, 1.0]

    browser.open(f"{flower_url}/celery-agent/searches/{sid}")
    rows = browser.eval("Object.fromEntries([...document.querySelectorAll('tr[data-trial]')]"
                        ".map(tr => [tr.dataset.trial, [...tr.cells].map(td => td.textContent)]))")  # fmt: skip
    shown = {0.25: "0.75", 0.5: "1"}  # each trial's objective as the page prints it
    assert len(rows) == 2
    for t in result.trials:
        cells = rows[str(t.number)]
        assert cells[2:] == [shown[t.params["lr"]], str(t.params["lr"]), "done", t.run_id[:12]]
    assert _drawn(browser, "#objective-chart") == {"trial": 2, "best so far": 2}
    assert _drawn(browser, "[data-param='lr']") == {"trial": 2}  # the objective by lr
    best_first = ",".join(t.run_id for t in sorted(result.trials, key=lambda t: -(t.value or 0)))
    assert browser.eval(f"!!document.querySelector('a[href$=\"/compare?ids={best_first}\"]')")
    browser.screenshot(ARTIFACTS / "flower-search.png")
    browser.open(f"{flower_url}/celery-agent/searches")
    assert browser.eval(f"!!document.querySelector('a[href$=\"/searches/{sid}\"]')")
    status, missing = _status(f"{flower_url}/celery-agent/searches/nosuch")
    assert status == 404 and "no search &#x27;nosuch&#x27; is recorded" in missing


def test_basic_auth_guards_the_charts_pages_and_endpoints_under_the_url_prefix(
    make_flower, trained
):
    url = make_flower("--basic-auth=bob:pa55", "--url_prefix=ui", api=False)
    creds = {"Authorization": "Basic " + base64.b64encode(b"bob:pa55").decode()}
    a, b = trained
    paths = [f"/celery-agent/compare?ids={a.id},{b.id}", f"/celery-agent/api/compare?ids={a.id},{b.id}",
             "/celery-agent/searches", "/celery-agent/searches/x", "/celery-agent/api/searches",
             "/celery-agent/api/searches/x", f"/celery-agent/api/runs/{a.id}/metrics",
             "/celery-agent/static/charts.js"]  # fmt: skip
    for path in paths:
        assert _status(url + path)[0] == 401, path
    code, page = _status(url + paths[0], creds)
    assert code == 200 and "src='/ui/celery-agent/static/charts.js'" in page
    assert f"href='/ui/celery-agent/runs/{a.id}'" in page
    code, data = _json(url + paths[-2], creds)
    assert code == 200 and data["counts"] == {"loss": 5, "acc": 1}
    assert _status(url + "/celery-agent/static/charts.js", creds)[0] == 200


#: reports three losses, waits for its trigger file, reports two more
LIVE = textwrap.dedent(
    """\
    import os, time
    from celery_agent.metrics import report
    for step, loss in enumerate([2.0, 1.5, 1.25]):
        report("loss", loss, step)
    while not os.path.exists(os.environ["TRIGGER"]):
        time.sleep(0.02)
    report("loss", 1.0, 3)
    report("loss", 0.75, 4)
    report("acc", 0.5)
    """
)


def test_a_run_page_charts_its_metrics_and_follows_them_while_it_runs(
    flower_url, worker, make_repo, tmp_path, browser
):
    trigger = tmp_path / "go"
    repo = make_repo({"live.py": LIVE})
    run = submit(TaskSpec(repo=str(repo), entry="live.py", executor="local", queue=worker.queues,
                          name="live", env={"TRIGGER": str(trigger)}))  # fmt: skip
    try:
        browser.open(f"{flower_url}/celery-agent/runs/{run.id}")
        browser.wait("document.querySelectorAll('#metrics path.ca-series').length === 1", 60)
        assert _drawn(browser, "#metrics") == {"loss": 3}
        trigger.touch()
        browser.wait("document.querySelectorAll('#metrics path.ca-series').length === 2", 30)
    finally:
        record = run.wait(60)
    assert record["state"] == "succeeded", record.get("error")
    assert _drawn(browser, "#metrics") == {"loss": 5, "acc": 1}
    points = browser.eval("document.querySelector('#metrics path[data-label=loss]')"
                          ".getAttribute('d').split(/[ML]/).filter(Boolean).length")  # fmt: skip
    assert points == 5
    loss = "#metrics [data-metric=loss]"  # its values drawn on a log axis, ticked by the user
    browser.click(loss + " .ca-log input")
    ticks = browser.eval(f"[...document.querySelectorAll('{loss} .ca-axes text[text-anchor=end]')]"
                         ".map(t => t.textContent)")  # fmt: skip
    assert ticks == ["0.79433", "1", "1.2589", "1.5849", "1.9953"]  # 10^-0.1 ... 10^0.3
    assert _drawn(browser, loss) == {"loss": 5}
    browser.eval("document.getElementById('metrics').scrollIntoView()")
    browser.screenshot(ARTIFACTS / "flower-run-metrics.png")


def _losses(store, run_id: str, n: int, start: int = 0) -> None:
    append(store, run_id, [Metric("loss", float(i) / 2, i) for i in range(start, start + n)])


def test_the_series_cache_reads_only_entries_added_since_and_drops_the_least_recent_run(store):
    a, b = (f"cache-{uuid.uuid4().hex[:8]}" for _ in range(2))
    for run_id in (a, b):
        store.create_run(run_id, {"entry": "x.py"}, "q")
    _losses(store, a, 30)
    cache = SeriesCache(max_points=60)
    assert run_series(store, a, cache=cache)["series"] == {"loss": [[i, i / 2] for i in range(30)]}
    store.r.xtrim(store.keys.metrics(a), maxlen=0)  # what was read stays read...
    append(store, a, [Metric("loss", 99.0, 30), Metric("acc", 0.5)])  # ...and only this is new
    got = run_series(store, a, cache=cache)
    assert got["series"] == {
        "loss": [[i, i / 2] for i in range(30)] + [[30, 99.0]],
        "acc": [[0, 0.5]],
    }
    assert got["counts"] == {"loss": 31, "acc": 1} and got["state"] == "queued" and not got["ended"]
    assert run_series(store, a, cache=SeriesCache())["counts"] == {"loss": 1, "acc": 1}

    _losses(store, b, 40)  # 32 + 40 points > 60: run a, read least recently, is dropped
    assert run_series(store, b, cache=cache)["counts"] == {"loss": 40}
    assert run_series(store, a, cache=cache)["counts"] == {"loss": 1, "acc": 1}  # read afresh


def test_the_metrics_benchmark_runs_and_prints_its_table():
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_metrics_api", "--quick"],
                          cwd=ARTIFACTS.parents[1], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split("  ")[0] for line in done.stdout.splitlines()[2:]]
    assert rows == ["metrics api: first read, 5,000 points -> 2000",
                    "metrics api: refresh, 100 new points", "metrics api: JSON size, 5,000 points"]  # fmt: skip
