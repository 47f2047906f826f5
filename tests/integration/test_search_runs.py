"""Searches end to end: a real worker runs every trial; the objective comes from its metrics."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from celery_agent import TaskSpec
from celery_agent import metrics as metrics_mod
from celery_agent.cli_search import search as search_command
from celery_agent.search import cancel_search, load_search, run_search
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "search"

EXIT_WITH = """\
import argparse, time
p = argparse.ArgumentParser()
p.add_argument("--code", type=int, default=0)
p.add_argument("--sleep", type=float, default=0)
a = p.parse_args()
time.sleep(a.sleep)
raise SystemExit(a.code)
"""


@pytest.mark.network
def test_search_over_a_sklearn_model_finds_the_best_trial_by_its_metric(worker, make_repo, store, tmp_path):  # fmt: skip
    """Needs launch.py to wrap the run's log sink with metrics.tap (else no trial has a value)."""
    repo = make_repo({"train_digits.py": (EXAMPLE / "train_digits.py").read_text()})
    spec = TaskSpec(repo=str(repo), entry="train_digits.py", requirements=["scikit-learn"],
                    queue=worker.queues, args=["--folds", "3"])  # fmt: skip
    result = run_search(spec, ["max_depth=choice:1,3,6,12"], "val_acc", "max", trials=4,
                        parallel=2, sampler="grid", out_dir=tmp_path / "out", poll=0.2)  # fmt: skip
    assert result.state == "finished" and len(result.trials) == 4
    assert [t.state for t in result.trials] == ["done"] * 4, [t.error for t in result.trials]
    recorded = {t.run_id: metrics_mod.last_values(store, t.run_id)["val_acc"]["value"] for t in result.trials}  # fmt: skip
    assert result.best is not None and recorded[result.best.run_id] == max(recorded.values())
    assert result.best.params["max_depth"] in (6, 12) and len(metrics_mod.series(store, result.best.run_id, "val_acc")) == 3  # fmt: skip
    assert store.get(result.best.run_id)["params"]["max_depth"] == result.best.params["max_depth"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["best"]["run_id"] == result.best.run_id
    assert (tmp_path / "out" / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert load_search(result.search_id, store).best == result.best


def test_failed_trials_are_recorded_and_the_search_goes_on(worker, make_repo, tmp_path):
    repo = make_repo({"run.py": EXIT_WITH})
    spec = {"repo": str(repo), "entry": "run.py", "executor": "local", "queue": worker.queues}
    (tmp_path / "base.json").write_text(json.dumps(spec))
    out = CliRunner().invoke(search_command, [str(tmp_path / "base.json"), "-p", "code=choice:3,0",
        "--objective", "acc", "--sampler", "grid", "--trials", "5", "--wait", "--out", str(tmp_path / "o")],
        standalone_mode=False)  # fmt: skip
    assert out.return_value == 1, out.output
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["state"] == "finished" and saved["best"] is None
    errors = {t["params"]["code"]: t["error"] for t in saved["trials"]}
    assert errors == {3: "run failed", 0: "no finite acc reported"}
    assert "no trial reported the objective" in out.output


def test_cancelling_a_search_cancels_its_running_trials(worker, make_repo, store, tmp_path):
    repo = make_repo({"run.py": EXIT_WITH})
    spec = TaskSpec(repo=str(repo), entry="run.py", executor="local", queue=worker.queues, params={"sleep": 60})  # fmt: skip
    got: list = []
    sid = "cancel-" + tmp_path.name[-6:]
    thread = threading.Thread(target=lambda: got.append(run_search(
        spec, ["code=choice:0,1"], "acc", trials=4, parallel=2, sampler="grid",
        out_dir=tmp_path, poll=0.1, search_id=sid)))  # fmt: skip
    thread.start()
    wait_for("two trials running", lambda: _running(store, sid), 60, every=0.2)
    t0 = time.monotonic()
    cancel_search(sid, store)
    thread.join(30)
    assert not thread.is_alive() and got[0].state == "cancelled"
    assert [t.state for t in got[0].trials] == ["cancelled"] * 2, "no third trial was started"
    for t in got[0].trials:
        record = _wait_terminal(store, t.run_id)
        assert record["state"] == "aborted"
    assert time.monotonic() - t0 < 30


def _running(store, sid):
    try:
        trials = load_search(sid, store).trials
    except Exception:
        return False
    return len(trials) == 2 and all(store.get(t.run_id)["state"] == "running" for t in trials)


def _wait_terminal(store, run_id, timeout=30):
    ended = ("aborted", "failed", "succeeded")
    return wait_for(
        f"run {run_id} to end",
        lambda: (r := store.get(run_id))["state"] in ended and r,
        timeout,
        every=0.2,
    )
