"""Metric series, compare and searches in a real Flower, from real runs on a real worker, read
through the JSON API and rendered by headless Chromium."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from test_flower import ARTIFACTS, CHROMIUM, chromium

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


def _json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


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


def _shot(tmp_path: Path, page: str, name: str, height: int = 1000) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / name
    shot.unlink(missing_ok=True)
    chromium(tmp_path, f"--window-size=1280,{height}", f"--screenshot={shot}", page)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000


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


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_compare_highlights_the_differing_param_and_overlays_the_curves(
    flower_url, trained, tmp_path
):
    a, b = trained
    status, data = _json(f"{flower_url}/celery-agent/api/compare?ids={a.id},{b.id[:10]}")
    assert status == 200 and [r["id"] for r in data["runs"]] == [a.id, b.id]
    params = {row["name"]: row for row in data["params"]}
    assert params["lr"] == {"name": "lr", "values": [0.25, 0.5], "differs": True}
    assert params["seed"]["differs"] is False  # the same default, recorded as the run used it
    assert data["metrics"]["loss"][b.id] == [[0, 2.5], [1, 2.0], [2, 1.75], [3, 1.5], [4, 1.25]]

    page = f"{flower_url}/celery-agent/compare?ids={a.id},{b.id}"
    dom = chromium(tmp_path, "--dump-dom", page)
    marked = re.findall(r"<tr class=\"differs\" data-differs=\"1\">(.*?)</tr>", dom)
    assert any(row.startswith("<td>lr ≠</td><td>0.25</td><td>0.5</td>") for row in marked), marked
    assert not any(row.startswith("<td>seed") for row in marked)
    drawn = re.findall(r'<path [^>]*data-label="([^"]+)" data-points="(\d+)"', dom)
    assert (f"{a.id[:8]} train", "5") in drawn and (f"{b.id[:8]} train", "5") in drawn
    _shot(tmp_path, page, "flower-compare.png", 1100)


def test_compare_refuses_one_run_too_many_runs_and_unknown_ids(flower_url, trained):
    run = trained[0]
    status, err = _json(f"{flower_url}/celery-agent/api/compare?ids={run.id}")
    assert status == 400 and "at least 2 runs, got 1" in err["error"] and "ids=" in err["hint"]
    many = ",".join(f"r{i}" for i in range(11))
    status, err = _json(f"{flower_url}/celery-agent/api/compare?ids={many}")
    assert status == 400 and "at most 10 runs, got 11" in err["error"]
    status, page = _status(f"{flower_url}/celery-agent/compare?ids={run.id},nosuchrun")
    assert status == 404 and "&#x27;nosuchrun&#x27;" in page and "name='ids'" in page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_a_search_page_lists_its_trials_and_draws_its_objective(
    flower_url, worker, make_repo, tmp_path
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

    page = f"{flower_url}/celery-agent/searches/{sid}"
    dom = chromium(tmp_path, "--dump-dom", page)
    shown = {0.25: "0.75", 0.5: "1"}  # each trial's objective as the page prints it
    for t in result.trials:
        row_html = re.search(rf'<tr data-trial="{t.number}">(.*?)</tr>', dom)
        assert row_html, f"trial {t.number} is not on the page"
        cells = f'<td class="num">{shown[t.params["lr"]]}</td><td class="num">{t.params["lr"]}</td>'
        assert cells + "<td>done</td>" in row_html.group(1) and t.run_id[:12] in row_html.group(1)
    assert 'data-label="trial" data-points="2"' in dom
    assert sid in chromium(tmp_path, "--dump-dom", f"{flower_url}/celery-agent/searches")
    status, missing = _status(f"{flower_url}/celery-agent/searches/nosuch")
    assert status == 404 and "no search &#x27;nosuch&#x27; is recorded" in missing


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
    assert rows == ["metrics api: first read, 10,000 points -> 2000",
                    "metrics api: refresh, 100 new points", "metrics api: JSON size, 10,000 points"]  # fmt: skip
