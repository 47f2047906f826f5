from __future__ import annotations

from celery_agent.rerun import respec


def test_rerun_pins_commit_and_versions_and_applies_edits():
    record = {
        "run_id": "r1",
        "spec": {"repo": "/r", "entry": "t.py", "branch": "main", "params": {"lr": 0.1, "bs": 8},
                 "requirements": ["cademo"]},
        "commit": "a" * 40,
        "freeze": ["cademo==1.0", "-e file:///x"],
    }  # fmt: skip
    spec = respec(record, {"lr": 0.5}, queue="q2")
    assert spec.commit == "a" * 40 and spec.branch is None
    assert spec.params == {"lr": 0.5, "bs": 8} and spec.queue == "q2"
    assert spec.requirements == ["cademo==1.0"]
    assert respec(record, pin=False).requirements == ["cademo"]


def test_rerun_of_a_conda_run_does_not_turn_its_freeze_into_pip_requirements():
    record = {"run_id": "r2", "spec": {"repo": "/r", "entry": "t.py", "executor": "conda",
              "conda": {"specs": ["python"]}}, "freeze": ["numpy==2.0"]}  # fmt: skip
    assert respec(record).requirements is None
