"""Retention and deletion take a run's artifacts with it; `keep` protects the run, its artifacts
and its run folder. Real Redis, a real folder store."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
from test_retention import add_run

from celery_agent import retention, state
from celery_agent.artifacts import ArtifactStore
from celery_agent.cli import main
from celery_agent.errors import StateError
from celery_agent.state import RunStore

pytestmark = pytest.mark.integration

DAY = retention.DAY


@pytest.fixture()
def own(store) -> RunStore:
    """A store under a prefix of its own on the test Redis."""
    return RunStore(store.r, prefix=f"art{uuid.uuid4().hex[:8]}")


def with_artifacts(own: RunStore, root: Path, days_ago: float, **fields: str) -> str:
    """An ended run that kept one file in the folder store at ``root``."""
    run_id = add_run(own, state.SUCCEEDED, days_ago)
    outputs = root.parent / f"out-{run_id}"
    outputs.mkdir(parents=True)
    (outputs / "model.pt").write_bytes(b"weights")
    kept = ArtifactStore(root.as_uri()).upload(run_id, outputs)
    assert kept["status"] == "uploaded"
    own.update(run_id, artifacts=kept, **fields)
    return run_id


def test_retention_deletes_artifacts_and_keep_protects_them(own, tmp_path: Path):
    root = tmp_path / "store"
    old = with_artifacts(own, root, 40)
    kept = with_artifacts(own, root, 40)
    young = with_artifacts(own, root, 1)
    unreachable = add_run(own, state.FAILED, 40)  # its store is gone: the run goes anyway
    own.update(unreachable, artifacts={"status": "uploaded", "root": "nosuchscheme://x/y"})
    retention.set_keep(own, kept)
    assert sorted(retention.expire_runs(own, days=30)) == sorted([old, unreachable])
    assert not (root / "runs" / old).exists(), "the expired run's artifacts went with it"
    assert (root / "runs" / kept / "model.pt").is_file() and own.get(kept)["state"]
    assert (root / "runs" / young / "model.pt").is_file()
    runs_dir = tmp_path / "runs"
    for run_id in (kept, old):
        (runs_dir / run_id).mkdir(parents=True)
        os.utime(runs_dir / run_id, (time.time() - 40 * DAY,) * 2)
    assert retention.prune_run_dirs(runs_dir, own, days=30) == [old]
    assert (runs_dir / kept).is_dir(), "a kept run keeps its folder"
    retention.set_keep(own, kept, False)
    assert retention.expire_runs(own, days=30) == [kept]
    assert not (root / "runs" / kept).exists()


def test_delete_takes_the_artifacts_and_refuses_kept_or_active_runs(own, tmp_path: Path, capsys):
    root = tmp_path / "store"
    run_id = with_artifacts(own, root, 1, keep="1")
    with pytest.raises(StateError, match="marked keep"):
        retention.delete_run(own, run_id)
    running = add_run(own, state.RUNNING, 1)
    with pytest.raises(StateError, match="cancel it first"):
        retention.delete_run(own, running)
    uploading = add_run(own, state.SUCCEEDED, 1)
    own.update(uploading, artifacts={"status": "uploading", "root": root.as_uri()})
    with pytest.raises(StateError, match="still uploading"):
        retention.delete_run(own, uploading)
    assert (root / "runs" / run_id / "model.pt").is_file() and own.get(running)["state"]
    retention.set_keep(own, run_id, False)
    assert retention.delete_run(own, run_id) is True
    assert not (root / "runs" / run_id).exists()
    assert own.r.exists(own.keys.run(run_id)) == 0 and own.r.exists(own.keys.log(run_id)) == 0


def test_the_keep_and_delete_commands(store, tmp_path: Path, capsys):
    root = tmp_path / "store"
    run_id = with_artifacts(store, root, 1)
    assert main(["keep", run_id]) == 0 and store.get(run_id)["keep"] == "1"
    assert main(["delete", run_id, "--yes"]) != 0
    assert "marked keep" in capsys.readouterr().err
    assert main(["keep", run_id, "--off"]) == 0 and "keep" not in store.get(run_id)
    assert main(["delete", run_id, "--yes"]) == 0
    assert "deleted run" in capsys.readouterr().out
    assert not (root / "runs" / run_id).exists() and store.r.exists(store.keys.run(run_id)) == 0
    running = add_run(store, state.RUNNING, 1)
    assert main(["delete", running, "--yes"]) != 0
    assert "cancel it first" in capsys.readouterr().err
