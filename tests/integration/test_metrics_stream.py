"""Metrics from a real process through the tap into a real Redis, and the metrics command."""

from __future__ import annotations

import json
import os
import sys
import uuid

import pytest
from click.testing import CliRunner
from redis_support import lose_next_reply

from celery_agent import metrics
from celery_agent.cli_search import metrics as metrics_command
from celery_agent.runner import run_process

pytestmark = pytest.mark.integration

SCRIPT = """
import sys
from celery_agent.metrics import report
for step in range(3):
    print("epoch", step)
    report("loss", 1.0 / (step + 1), step=step)
print('@@celery-agent:metric {"name": "val_acc", "value": 0.93}', flush=True)
print("@@celery-agent:metric {broken", flush=True)
print("done")
"""


def run_script(store, tmp_path, script=SCRIPT):
    run_id = uuid.uuid4().hex
    store.create_run(run_id, {"repo": ".", "entry": "x.py"}, "q")
    sink = metrics.tap(lambda lines: store.append_log(run_id, lines), store, run_id)
    outcome = run_process([sys.executable, "-c", script], env=dict(os.environ), cwd=tmp_path, sink=sink)  # fmt: skip
    assert outcome.status == "succeeded", outcome.tail
    return run_id


def test_tap_stores_reported_metrics_and_keeps_every_line_in_the_log(store, tmp_path):
    run_id = run_script(store, tmp_path)
    _, log = store.read_log(run_id)
    assert log[0] == "epoch 0" and log[-1] == "done" and len(log) == 9
    assert [(p.step, p.value) for p in metrics.series(store, run_id, "loss")] == [(0, 1.0), (1, 0.5), (2, 1 / 3)]  # fmt: skip
    assert metrics.last_values(store, run_id) == {
        "loss": {"value": 1 / 3, "step": 2},
        "val_acc": {"value": 0.93, "step": None},
    }
    assert metrics.last_value(store, run_id, "missing") is None


def test_metrics_command_prints_each_series(store, tmp_path):
    run_id = run_script(store, tmp_path)
    out = CliRunner().invoke(metrics_command, [run_id, "--json"], catch_exceptions=False)
    assert out.exit_code == 0
    data = json.loads(out.output)
    assert [p["value"] for p in data["loss"]] == [1.0, 0.5, 1 / 3]
    text = CliRunner().invoke(metrics_command, [run_id[:10], "--name", "val_acc"]).output
    assert "0.93" in text and "loss" not in text


def test_metrics_sent_again_after_a_lost_reply_are_stored_once(store, tmp_path, monkeypatch):
    run_id = uuid.uuid4().hex
    store.create_run(run_id, {"repo": ".", "entry": "x.py"}, "q")
    tap = metrics.tap(lambda lines: None, store, run_id)
    lost = lose_next_reply(store.r, monkeypatch)
    tap([metrics.format_line("loss", 1.0, 0), metrics.format_line("loss", 0.5, 1)])
    assert lost[0] and len(tap.pending) == 2, "Redis applied the batch, its reply was lost"
    tap([metrics.format_line("loss", 0.25, 2)])  # the kept two go again, with the next
    other = metrics.tap(lambda lines: None, store, run_id)  # a later attempt counts anew
    other([metrics.format_line("loss", 2.0, 0)])
    points = [(p.step, p.value) for p in metrics.series(store, run_id, "loss")]
    assert points == [(0, 1.0), (1, 0.5), (2, 0.25), (0, 2.0)]
    assert tap.pending == [] and tap.sent == 3
