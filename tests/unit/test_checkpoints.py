"""Checkpoint sync on a real local folder store: only what changed (size, mtime) is copied, files
still being written are not kept as complete, deletions follow, and a restore puts the files back
for the attempt that resumes the run."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from celery_agent import artifacts, digests
from celery_agent.artifacts import ArtifactStore
from celery_agent.checkpoints import CheckpointSync, describe, partial, restore, resume, scan
from celery_agent.errors import AgentError


@pytest.fixture()
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore((tmp_path / "store").as_uri())


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "output" / "checkpoints"
    path.mkdir(parents=True)
    return path


def age(path: Path, seconds: float) -> None:
    """Make ``path`` look written ``seconds`` ago (settled)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def kept(tmp_path: Path, run: str = "r1") -> dict[str, bytes]:
    """The files the store holds for ``run``'s checkpoints, hidden names included."""
    root = tmp_path / "store" / "runs" / run / "checkpoints"
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_a_round_copies_only_what_changed(store, folder, tmp_path):
    (folder / "a.pt").write_bytes(b"a1")
    (folder / "sub").mkdir()
    (folder / "sub" / "b.pt").write_bytes(b"b1")
    age(folder / "a.pt", 5), age(folder / "sub" / "b.pt", 5)
    sync = CheckpointSync(store, "r1", folder, "checkpoints", interval=0)
    assert sync.sync() == 2
    assert kept(tmp_path) == {"a.pt": b"a1", "sub/b.pt": b"b1"}
    assert sync.sync() == 0, "nothing changed: nothing copied"
    (folder / "a.pt").write_bytes(b"a2-longer")
    age(folder / "a.pt", 3)
    assert sync.sync() == 1
    assert kept(tmp_path) == {"a.pt": b"a2-longer", "sub/b.pt": b"b1"}
    assert sync.stats.files == 2 and sync.stats.bytes == 9 + 2 and sync.stats.uploads == 3
    assert describe(sync.stats.record()) == (
        f"checkpoints: 2 file(s), 11 bytes at {store.url}/runs/r1/checkpoints"
    )
    assert describe(CheckpointSync(store, "r2", folder, "x", interval=0).stats.record()) is None


def test_a_file_written_just_now_waits_for_the_next_round_unless_it_is_the_last(
    store, folder, tmp_path
):
    (folder / "fresh.pt").write_bytes(b"being written")
    sync = CheckpointSync(store, "r1", folder, "checkpoints", interval=0, settle=60)
    assert sync.sync() == 0 and kept(tmp_path) == {}
    assert sync.stop()["files"] == 1, "the last round (the process has ended) takes it"
    assert kept(tmp_path) == {"fresh.pt": b"being written"}


def test_temporary_and_hidden_names_are_never_copied(store, folder, tmp_path):
    for name in ("ckpt.pt.tmp", ".ckpt.pt", "x.part", "ok.pt"):
        (folder / name).write_bytes(b"x")
    assert [partial(n) for n in ("a.tmp", ".a", "d/.x/y", "a.pt")] == [True, True, True, False]
    CheckpointSync(store, "r1", folder, "checkpoints", interval=0).stop()
    assert kept(tmp_path) == {"ok.pt": b"x"}


def test_a_file_that_changes_while_it_is_copied_is_not_kept_as_complete(
    store, folder, tmp_path, monkeypatch
):
    path = folder / "model.pt"
    path.write_bytes(b"old")
    age(path, 5)
    sync = CheckpointSync(store, "r1", folder, "checkpoints", interval=0)
    real_put = store.fs.put_file

    def put_while_written(src: str, dst: str, **kw: object) -> None:
        real_put(src, dst, **kw)
        path.write_bytes(b"new and longer")  # the run writes it again during the copy

    monkeypatch.setattr(store.fs, "put_file", put_while_written)
    assert sync.sync() == 0
    assert kept(tmp_path) == {}, "neither the torn copy nor its hidden name is left"
    monkeypatch.setattr(store.fs, "put_file", real_put)
    assert sync.stop()["files"] == 1
    assert kept(tmp_path) == {"model.pt": b"new and longer"}


def test_a_deleted_checkpoint_leaves_the_store_too(store, folder, tmp_path):
    for name in ("step-1.pt", "step-2.pt"):
        (folder / name).write_bytes(name.encode())
    sync = CheckpointSync(store, "r1", folder, "checkpoints", interval=0)
    sync.sync(final=True)
    (folder / "step-1.pt").unlink()
    sync.sync()
    assert kept(tmp_path) == {"step-2.pt": b"step-2.pt"}
    assert sync.stats.files == 1


def test_exclude_globs_apply_to_the_path_in_the_output_folder(store, folder, tmp_path):
    (folder / "keep.pt").write_bytes(b"k")
    (folder / "opt.state").write_bytes(b"o")
    sync = CheckpointSync(store, "r1", folder, "checkpoints", interval=0, exclude=["*.state"])
    sync.stop()
    assert kept(tmp_path) == {"keep.pt": b"k"}
    assert scan(folder, "checkpoints", ["checkpoints"]) == {}


def test_the_thread_syncs_every_interval_and_reports(store, folder, tmp_path):
    reports: list[dict] = []
    got = threading.Event()
    sync = CheckpointSync(store, "r1", folder, "checkpoints", interval=0.05, settle=0.0,
                          report=lambda r: (reports.append(r), got.set()))  # fmt: skip
    sync.start()
    try:
        (folder / "s.pt").write_bytes(b"1")
        assert got.wait(10), "a round copied the file while the run went on"
        assert kept(tmp_path) == {"s.pt": b"1"} and reports[-1]["files"] == 1
    finally:
        sync.stop()
    assert sync.stats.rounds >= 2


def test_an_unwritable_store_is_reported_not_raised(folder, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    (folder / "x.pt").write_bytes(b"x")
    sync = CheckpointSync(ArtifactStore((blocker / "s").as_uri()), "r1", folder, "checkpoints",
                          interval=0)  # fmt: skip
    out = sync.stop()
    assert out["files"] == 0 and "x.pt" in out["error"], out
    assert (describe(out) or "").startswith("checkpoints: failed (x.pt: ")
    assert (folder / "x.pt").read_bytes() == b"x", "nothing lost locally"


def test_restore_puts_the_kept_files_back_and_the_sync_starts_from_them(store, folder, tmp_path):
    (folder / "sub").mkdir()
    (folder / "last.json").write_text('{"step": 7}')
    (folder / "sub" / "w.bin").write_bytes(b"w" * 100)
    CheckpointSync(store, "r1", folder, "checkpoints", interval=0).stop()
    fresh = tmp_path / "attempt-2" / "output"
    notes: list[str] = []
    out = resume(store, "r1", output_dir=fresh, rel="checkpoints", attempt=2, resume_from=None,
                 interval=0, note=notes.append)  # fmt: skip
    assert (fresh / "checkpoints" / "last.json").read_text() == '{"step": 7}'
    assert (fresh / "checkpoints" / "sub" / "w.bin").read_bytes() == b"w" * 100
    assert out.env["CELERY_AGENT_ATTEMPT"] == "2" and out.env["CELERY_AGENT_RESUMED"] == "1"
    assert out.resumed is not None and out.resumed["files"] == 2 and out.resumed["from"] == "r1"
    assert any("restored 2 file(s)" in n for n in notes), notes
    assert out.sync is not None and out.sync.sync(final=True) == 0, "restored files are kept"


def test_a_first_attempt_restores_nothing_and_is_not_resumed(store, tmp_path):
    out = resume(store, "r9", output_dir=tmp_path / "o", rel="checkpoints", attempt=1,
                 resume_from=None, interval=0)  # fmt: skip
    assert out.env == {
        "CELERY_AGENT_ATTEMPT": "1",
        "CELERY_AGENT_CHECKPOINT_DIR": str(tmp_path / "o" / "checkpoints"),
    }
    assert out.resumed is None and restore(store, "r9", "checkpoints", tmp_path / "o") == {}


def test_resume_from_another_run_copies_its_files_to_the_new_runs_place(store, folder, tmp_path):
    (folder / "c.pt").write_bytes(b"c")
    CheckpointSync(store, "old", folder, "checkpoints", interval=0).stop()
    out = resume(store, "new", output_dir=tmp_path / "n", rel="checkpoints", attempt=1,
                 resume_from="old", interval=0)  # fmt: skip
    assert out.resumed is not None and out.resumed["from"] == "old"
    assert out.sync is not None and out.sync.sync(final=True) == 1
    assert kept(tmp_path, "new") == {"c.pt": b"c"}, "a loss of the new run resumes from its own"


def test_resume_from_a_run_that_kept_none_fails_naming_it(store, tmp_path):
    with pytest.raises(AgentError, match="run old kept no checkpoints"):
        resume(store, "new", output_dir=tmp_path / "n", rel="checkpoints", attempt=1,
               resume_from="old", interval=0)  # fmt: skip


def test_the_example_training_script_resumes_to_the_same_result(tmp_path: Path):
    example = Path(__file__).resolve().parents[2] / "examples" / "train.py"

    def train(out: Path, epochs: int) -> str:
        env = dict(os.environ, CELERY_AGENT_OUTPUT_DIR=str(out),
                   CELERY_AGENT_CHECKPOINT_DIR=str(out / "checkpoints"))  # fmt: skip
        done = subprocess.run([sys.executable, str(example), "--epochs", str(epochs)], env=env,
                              capture_output=True, text=True, check=True)  # fmt: skip
        return done.stdout

    assert "resuming" not in train(tmp_path / "a", 3)
    assert "resuming from epoch 3" in train(tmp_path / "a", 5), "it continues from its last one"
    assert "resuming" not in train(tmp_path / "b", 5)
    assert (tmp_path / "a" / "result.yaml").read_text() == (
        tmp_path / "b" / "result.yaml"
    ).read_text()
    assert sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir()) == [
        "epoch-3.json", "epoch-4.json", "epoch-5.json"
    ]  # fmt: skip


def test_an_attempt_whose_run_went_to_another_runner_overwrites_nothing(store, folder, tmp_path):
    (folder / "old.pt").write_bytes(b"stale")
    superseded = threading.Event()
    sync = CheckpointSync(store, "r1", folder, "checkpoints", interval=0,
                          active=lambda: not superseded.is_set())  # fmt: skip
    superseded.set()  # it stalled; the run's claim went to another worker
    assert sync.stop()["files"] == 0 and kept(tmp_path) == {}


def test_a_container_sees_the_checkpoint_folder_where_its_output_is_mounted(tmp_path):
    from celery_agent.executors import docker_options as opt

    paths = opt.PathMap()
    paths.add(tmp_path / "output", opt.OUTPUT)
    env = {"CELERY_AGENT_CHECKPOINT_DIR": str(tmp_path / "output" / "checkpoints")}
    assert opt.container_env(env, [], paths)["CELERY_AGENT_CHECKPOINT_DIR"] == (
        f"{opt.OUTPUT}/checkpoints"
    )


def test_a_broken_copy_leaves_no_part_in_the_store_and_is_reported(
    store, folder, tmp_path, monkeypatch
):
    (folder / "w.pt").write_bytes(b"w" * 1000)
    real_put = store.fs.put_file

    def broken(src: str, dst: str, **kw: object) -> None:
        real_put(src, dst, **kw)  # (the part is written, then the connection drops)
        raise ConnectionError("store went away")

    monkeypatch.setattr(store.fs, "put_file", broken)
    out = CheckpointSync(store, "r1", folder, "checkpoints", interval=0).stop()
    assert "w.pt: ConnectionError: store went away" in out["error"] and out["files"] == 0
    assert kept(tmp_path) == {}


def test_the_ends_upload_copies_no_checkpoint_the_sync_kept_unless_it_changed(
    store, folder, tmp_path, monkeypatch
):
    output, run_dir = folder.parent, folder.parent.parent
    (folder / "a.pt").write_bytes(b"a" * 100)
    (folder / "b.pt").write_bytes(b"b" * 100)
    (output / "model.pt").write_bytes(b"m")
    CheckpointSync(store, "r1", folder, "checkpoints", interval=0,
                   sidecar=run_dir / artifacts.SYNCED).stop()  # fmt: skip
    (folder / "b.pt").write_bytes(b"B" * 100)  # changed since its sync
    copied: list[str] = []
    real_put = store.fs.put_file
    monkeypatch.setattr(store.fs, "put_file", lambda s, d, **kw: (copied.append(d), real_put(s, d)))
    out = store.upload("r1", output, synced=artifacts.synced_files(run_dir))
    assert sorted(Path(d).name for d in copied) == ["b.pt", "model.pt"], copied
    assert digests.finish(None, "r1", output, out) == "complete"
    assert {f["path"]: f["sha256"] for f in store.manifest("r1")} == {
        rel: hashlib.sha256((output / rel).read_bytes()).hexdigest()
        for rel in ("checkpoints/a.pt", "checkpoints/b.pt", "model.pt")
    }, "the manifest has every file, hashed"
    assert kept(tmp_path) == {"a.pt": b"a" * 100, "b.pt": b"B" * 100}
    copied.clear()
    (tmp_path / "store" / "runs" / "r1" / "checkpoints" / "a.pt").write_bytes(b"x" * 100)
    store.upload("r1", output, synced=artifacts.synced_files(run_dir))
    assert "a.pt" in [Path(d).name for d in copied], "a copy replaced since is copied again"
    assert kept(tmp_path)["a.pt"] == b"a" * 100


def test_a_non_root_container_is_given_the_checkpoint_folder_the_worker_restored_into(tmp_path):
    from celery_agent.executors.base import RunRequest
    from celery_agent.executors.docker import _writable

    folder = tmp_path / "output" / "checkpoints"
    job = RunRequest(env={"CELERY_AGENT_CHECKPOINT_DIR": str(folder)}, cwd=tmp_path,
                     sink=lambda lines: None, output_dir=tmp_path / "output")  # fmt: skip
    assert str(folder) in _writable(job)


def test_a_cancel_ends_a_restore_between_two_files(store, folder, tmp_path):
    for n in range(3):
        (folder / f"s{n}.pt").write_bytes(b"x")
    CheckpointSync(store, "r1", folder, "checkpoints", interval=0).stop()
    asked = iter([False, True, True])
    got = restore(store, "r1", "checkpoints", tmp_path / "again", stopped=lambda: next(asked))
    assert list(got) == ["s0.pt"] and [p.name for p in (tmp_path / "again").iterdir()] == ["s0.pt"]
