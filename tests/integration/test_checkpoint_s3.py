"""Checkpoint sync and restore against a real S3-compatible server (moto over HTTP): what a rename
is on an object store (copy, then delete), listings, deletions, and the end's upload that copies
no synced checkpoint again."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest

from celery_agent import artifacts
from celery_agent.artifacts import ArtifactStore
from celery_agent.checkpoints import CheckpointSync, resume

pytestmark = pytest.mark.integration


def test_checkpoints_sync_to_a_bucket_and_come_back_for_the_next_attempt(
    s3, tmp_path: Path, monkeypatch
):
    for name, value in s3.env().items():  # (this test's process only, as a worker has them)
        monkeypatch.setenv(name, value)
    bucket = s3.bucket(f"ck-{uuid.uuid4().hex[:8]}")
    store = ArtifactStore(f"s3://{bucket}/agent")
    run_dir = tmp_path / "run"
    folder = run_dir / "output" / "checkpoints"
    (folder / "sub").mkdir(parents=True)
    for rel, data in (("a.pt", b"a" * 1000), ("sub/b.pt", b"b" * 2000), ("c.pt.tmp", b"half")):
        (folder / rel).write_bytes(data)
        then = time.time() - 5
        os.utime(folder / rel, (then, then))
    sync = CheckpointSync(store, "r1", folder, "checkpoints", interval=0,
                          sidecar=run_dir / artifacts.SYNCED)  # fmt: skip
    assert sync.sync() == 2
    (folder / "a.pt").unlink()
    assert sync.stop()["files"] == 1
    listed = sorted(p.split("/runs/r1/", 1)[1] for p in s3.fs().find(f"{bucket}/agent/runs/r1"))
    assert listed == ["checkpoints/sub/b.pt"], "no hidden copy, no deleted file, no *.tmp"

    fresh = tmp_path / "attempt-2" / "output"
    out = resume(store, "r1", output_dir=fresh, rel="checkpoints", attempt=2, resume_from=None,
                 interval=0)  # fmt: skip
    assert (fresh / "checkpoints" / "sub" / "b.pt").read_bytes() == b"b" * 2000
    assert out.env["CELERY_AGENT_RESUMED"] == "1" and out.resumed is not None

    copied: list[str] = []
    real_put = store.fs.put_file
    monkeypatch.setattr(store.fs, "put_file", lambda s, d, **kw: (copied.append(d), real_put(s, d)))
    (folder / "c.pt.tmp").unlink()
    kept = store.upload("r1", run_dir / "output", synced=artifacts.synced_files(run_dir))
    assert kept["status"] == "uploaded" and [f["path"] for f in kept["files"]] == [
        "checkpoints/sub/b.pt"
    ]
    assert copied == [], "the synced checkpoint is not copied again"
