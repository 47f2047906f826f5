"""The sha256 of kept files, computed after the upload from the files still on the worker: a file
changed since is left without one, the wait for them is bounded by ``hashed_by``, the hashing
runs beside its caller, and a ``run://`` input without them is keyed by what the store says."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from celery_agent import artifacts, digests
from celery_agent.artifacts import ArtifactStore, hashed_by
from celery_agent.inputs import resolve
from celery_agent.pull import fetch


@pytest.fixture()
def outputs(tmp_path: Path) -> Path:
    folder = tmp_path / "run-1" / "output"
    (folder / "plots").mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"weights" * 1000)
    (folder / "plots" / "loss.txt").write_text("0.5\n")
    return folder


@pytest.fixture()
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore((tmp_path / "store").as_uri())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_changed_after_its_upload_gets_no_sha256(outputs: Path, store: ArtifactStore):
    kept = store.upload("r1", outputs)
    (outputs / "model.pt").write_bytes(b"rewritten after the run's end")
    assert digests.finish(None, "r1", outputs, kept) == "partial"
    files = {f["path"]: f for f in store.manifest("r1")}
    assert "sha256" not in files["model.pt"], "no hash of bytes the store does not hold"
    assert files["plots/loss.txt"]["sha256"] == sha(outputs / "plots" / "loss.txt")
    (outputs / "plots" / "loss.txt").unlink()
    assert digests.digest_all(outputs, list(kept["files"]))[1] == "partial"


def test_the_wait_for_hashes_ends_at_hashed_by():
    now = time.time()
    assert digests.wait_left({"artifacts": {"hashes": "pending", "hashed_by": now + 30}}) > 25
    assert digests.wait_left({"artifacts": {"hashes": "pending", "hashed_by": now - 1}}) == 0
    assert digests.wait_left({"artifacts": {"hashes": "complete"}}) == 0
    assert digests.wait_left({"artifacts": {"status": "failed"}}) == 0
    assert digests.wait_left({}) == 0
    assert hashed_by(0, now) == round(now + artifacts.HASH_SLACK, 3)
    assert hashed_by(artifacts.HASH_RATE * 10, now) == round(now + artifacts.HASH_SLACK + 10, 3)


def test_hashing_runs_beside_its_caller_and_nothing_is_hashed_twice(
    outputs: Path, store: ArtifactStore
):
    kept = store.upload("r2", outputs)
    hashing = digests.Digests()
    assert hashing.start(None, "r2", outputs, kept)
    assert not hashing.start(None, "r2", outputs, kept | {"hashes": "complete"})
    assert not hashing.start(None, "r2", outputs, None)
    assert not hashing.start(None, "r2", outputs.parent / "gone", kept)
    assert hashing.wait(10) == 0 and hashing.busy() == 0, "hashed in the background"
    manifest = json.loads(Path(store.path("r2", "manifest.json")).read_text())
    assert manifest["hashes"] == "complete", "hashed in the background"


def test_a_run_deleted_while_it_was_hashed_is_not_brought_back(outputs: Path, store: ArtifactStore):
    kept = store.upload("r3", outputs)
    assert store.remove("r3")
    assert digests.finish(None, "r3", outputs, kept) is None
    assert not Path(store.path("r3")).exists()


def test_an_old_manifest_without_the_hashes_field_still_reads(store: ArtifactStore, tmp_path):
    folder = Path(store.path("r4"))
    folder.mkdir(parents=True)
    old = [{"path": "m.pt", "size": 1, "sha256": "ab"}]
    (folder / "manifest.json").write_text(json.dumps(old))
    assert store.manifest("r4") == old


def record_of(kept: dict[str, Any]) -> dict[str, Any]:
    return {"run_id": "r5", "state": "succeeded", "artifacts": kept}


def test_a_run_input_without_hashes_is_keyed_by_the_store_and_checked_by_size(
    outputs: Path, store: ArtifactStore, tmp_path: Path
):
    kept = store.upload("r5", outputs)  # (as a worker that died before hashing leaves it)
    before = resolve("model", "run://r5/model.pt", lambda _: record_of(kept))
    assert [e.sha256 for e in before.entries] == [None]
    again = resolve("model", "run://r5/model.pt", lambda _: record_of(kept))
    assert again.key == before.key, "the same copy in the store: the same key"
    copy = Path(store.path("r5", "model.pt"))
    copy.write_bytes(b"x" * copy.stat().st_size)
    os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 10**9))
    changed = resolve("model", "run://r5/model.pt", lambda _: record_of(kept))
    assert changed.key != before.key, "a new copy in the store (mtime): a new key"
    got = fetch(store, "r5", kept["files"], tmp_path / "pulled")  # sizes checked, no sha256
    assert sorted(p.name for p in got) == ["loss.txt", "model.pt"]
    digests.finish(None, "r5", outputs, kept)
    hashed = kept | {"files": store.manifest("r5"), "hashes": "complete"}
    after = resolve("model", "run://r5/model.pt", lambda _: record_of(hashed))
    assert after.entries[0].sha256 == sha(outputs / "model.pt") and after.key != before.key
    with pytest.raises(Exception, match="sha256"):  # (the store's copy was overwritten above)
        fetch(store, "r5", hashed["files"], tmp_path / "pulled-again")


def test_show_says_while_the_hashes_are_still_to_come():
    from celery_agent.cli_artifacts import artifacts_line

    kept = {"status": "uploaded", "count": 2, "bytes": 10, "url": "file:///s/runs/r"}
    assert artifacts_line(kept) == "uploaded: 2 file(s), 10 bytes at file:///s/runs/r"
    assert "sha256 still being computed" in artifacts_line(kept | {"hashes": "pending"})
    assert "changed after the upload" in artifacts_line(kept | {"hashes": "partial"})
    assert artifacts_line(kept | {"hashes": "complete"}) == artifacts_line(kept)
