"""The sha256 of kept files reach the run record in real Redis after the run's end; a record
replaced or deleted meanwhile keeps what it has; a pull of a run whose worker died before it
hashed waits no longer than ``hashed_by`` and checks sizes; a pull waits for hashes on their way."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from pathlib import Path

import pytest

from celery_agent import digests, get_run
from celery_agent import handle as handle_module
from celery_agent.artifacts import ArtifactStore

pytestmark = pytest.mark.integration


@pytest.fixture()
def kept_run(store, tmp_path: Path):
    """(run id, its output folder, what its upload kept), the record in Redis says so."""
    run_id = f"dg-{uuid.uuid4().hex[:10]}"
    folder = tmp_path / run_id / "output"
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"weights" * 5000)
    (folder / "notes.txt").write_text("ok\n")
    kept = ArtifactStore((tmp_path / "store").as_uri()).upload(run_id, folder)
    store.create_run(run_id, {"entry": "t.py"}, "q", state="succeeded", artifacts=kept)
    return run_id, folder, kept


def test_the_hashes_reach_the_record_and_a_replaced_record_keeps_its_own(store, kept_run):
    run_id, folder, kept = kept_run
    assert store.get(run_id)["artifacts"]["hashes"] == "pending"
    assert digests.finish(store, run_id, folder, kept) == "complete"
    now = store.get(run_id)["artifacts"]
    assert now["hashes"] == "complete" and "hashed_by" not in now
    assert {f["path"]: f["sha256"] for f in now["files"]} == {
        "model.pt": hashlib.sha256(b"weights" * 5000).hexdigest(),
        "notes.txt": hashlib.sha256(b"ok\n").hexdigest(),
    }
    failed = {"status": "failed", "error": "a later upload", "files": [], "count": 0}
    store.update(run_id, artifacts=failed)  # (written while a late hashing went on)
    assert digests.finish(store, run_id, folder, kept) is None
    assert store.get(run_id)["artifacts"] == failed, "the newer record was kept"


def test_a_pull_of_a_run_whose_hashes_never_came_waits_only_while_their_mark_lives(
    store, kept_run, tmp_path: Path
):
    run_id, _folder, kept = kept_run  # (its worker died before it hashed: "pending" stays)
    assert kept["hashed_by"] > time.time() + 30
    t0 = time.monotonic()
    got = get_run(run_id).pull(tmp_path / "dest", wait=60)
    assert time.monotonic() - t0 < 5, "no process hashes them (no mark): no wait"
    assert (tmp_path / "dest" / "model.pt").read_bytes() == b"weights" * 5000
    assert sorted(p.name for p in got) == ["model.pt", "notes.txt"]
    digests.mark(store, run_id, kept, ttl=1.5)  # (a worker that dies now: its mark expires)
    t0 = time.monotonic()
    get_run(run_id).pull(tmp_path / "again", wait=60)
    waited = time.monotonic() - t0
    assert 1.0 <= waited < 10, f"waited {waited:.1f}s for a mark that expires in 1.5s"


def test_a_pull_waits_for_hashes_on_their_way_and_checks_them(
    store, kept_run, tmp_path: Path, monkeypatch
):
    run_id, folder, kept = kept_run
    handle = get_run(run_id)
    digests.mark(store, run_id, kept, ttl=2.0)  # (as its worker does before the run's end)
    assert handle.settled(0)["artifacts"]["hashes"] == "pending"
    hashing, waiting = digests.Digests(), threading.Event()

    def wait_left(record, store_=None) -> float:  # (says when the pull decided to wait)
        left = digests.wait_left(record, store_)
        if left:
            waiting.set()
        return left

    monkeypatch.setattr(handle_module, "wait_left", wait_left)

    def later() -> None:  # (the hashes arrive after the pull began to wait: it must wait)
        if waiting.wait(30):
            hashing.start(store, run_id, folder, kept, ttl=2.0)

    threading.Thread(target=later).start()
    record = handle.settled(60)
    assert record["artifacts"]["hashes"] == "complete", record["artifacts"]
    assert hashing.wait(10) == 0 and not store.r.exists(store.keys.digest(run_id))
    copy = Path(ArtifactStore(kept["root"]).path(run_id, "model.pt"))
    copy.write_bytes(b"W" * copy.stat().st_size)  # (the store's copy changed since)
    with pytest.raises(Exception, match="sha256"):
        handle.pull(tmp_path / "dest", wait=5)
    assert json.loads(copy.with_name("manifest.json").read_text())["hashes"] == "complete"
