from __future__ import annotations

import pytest

from celery_agent.errors import SpecError
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


def test_a_pinned_rerun_of_a_requirements_file_run_lists_the_frozen_set_instead():
    record = {"run_id": "r4", "spec": {"repo": "/r", "entry": "t.py", "requirements_file": "envs/a.txt"},
              "freeze": ["six==1.17.0"]}  # fmt: skip
    pinned = respec(record)
    assert pinned.requirements == ["six==1.17.0"] and pinned.requirements_file is None
    unpinned = respec(record, pin=False)
    assert unpinned.requirements is None and unpinned.requirements_file == "envs/a.txt"


SECRET_RECORD = {
    "run_id": "r3",
    "spec": {"repo": "/r", "entry": "t.py", "env": {"KEY": "***", "TOKEN": "***", "P": "1"},
             "secret_env": ["KEY", "TOKEN"]},
}  # fmt: skip


def test_rerun_takes_masked_secrets_from_the_given_env_then_the_callers_environment():
    spec = respec(SECRET_RECORD, env={"KEY": "k-1"}, environ={"TOKEN": "t-2", "KEY": "other"})
    assert spec.env == {"KEY": "k-1", "TOKEN": "t-2", "P": "1"}
    assert spec.secret_env == ["KEY", "TOKEN"] and spec.to_json()["env"]["KEY"] == "***"


def test_rerun_without_the_secret_values_names_them_and_how_to_give_them():
    with pytest.raises(SpecError) as info:
        respec(SECRET_RECORD, environ={"KEY": "k"})
    text = str(info.value)
    assert "run r3" in text and "TOKEN" in text and "KEY," not in text
    assert "--env TOKEN=value" in text and "export TOKEN" in text


def test_rerun_resume_starts_from_the_runs_checkpoints_or_says_it_kept_none():
    spec = {"repo": "/r", "entry": "t.py", "checkpoint_dir": "ck"}
    synced = {"run_id": "r5", "spec": spec, "checkpoints": {"files": 2}}
    uploaded = {
        "run_id": "r6",
        "spec": spec,
        "artifacts": {"count": 1, "files": [{"path": "ck/a"}]},
    }
    assert respec(synced, resume=True).resume_from == "r5"
    assert respec(uploaded, resume=True).resume_from == "r6"
    assert respec(synced).resume_from is None
    other = {"run_id": "r7", "spec": spec, "artifacts": {"count": 1, "files": [{"path": "m.pt"}]}}
    with pytest.raises(SpecError, match="run r7 kept no checkpoints .* ck/") as info:
        respec(other, resume=True)
    assert "rerun without --resume" in str(info.value)
