"""The artifact store on a real local folder: upload with its manifest, exclude globs, failures
reported (never raised), download checked against the manifest."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from celery_agent import artifacts, digests
from celery_agent.artifact_store import safe_url
from celery_agent.artifacts import ArtifactStore, excluded, output_files, upload_run
from celery_agent.errors import ConfigError
from celery_agent.pull import fetch
from celery_agent.settings import Settings


@pytest.fixture()
def outputs(tmp_path: Path) -> Path:
    folder = tmp_path / "run-1" / "output"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "cache").mkdir()
    (folder / "model.pt").write_bytes(b"weights" * 1000)
    (folder / "checkpoints" / "step-1.pt").write_bytes(b"ckpt")
    (folder / "cache" / "big.bin").write_bytes(b"x" * 10)
    (folder / "scratch.tmp").write_text("tmp")
    return folder


def test_exclude_matches_a_file_or_a_folder_above_it() -> None:
    assert excluded("a/b.tmp", ["*.tmp"])
    assert excluded("cache/x/y.bin", ["cache"])
    assert excluded("cache/x/y.bin", ["cache/"])
    assert not excluded("model.pt", ["*.tmp", "cache"])
    assert not excluded("mycache/y", ["cache"])


def test_upload_copies_every_file_with_its_manifest_and_hashes_after(
    outputs: Path, tmp_path: Path
) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    out = store.upload("r1", outputs)
    assert out["status"] == "uploaded" and out["count"] == 4, out
    assert out["hashes"] == "pending" and out["hashed_by"] > time.time(), out
    kept = tmp_path / "store" / "runs" / "r1"
    for entry in out["files"]:
        data = (kept / entry["path"]).read_bytes()
        assert entry["size"] == len(data) == (outputs / entry["path"]).stat().st_size
        assert entry["mtime"] == (outputs / entry["path"]).stat().st_mtime_ns / 1e9
        assert "sha256" not in entry, "the upload does not wait for the hashes"
    body = json.loads((kept / "manifest.json").read_text())
    assert body == {"hashes": "pending", "files": out["files"]}
    assert out["bytes"] == 7000 + 4 + 10 + 3
    assert digests.finish(None, "r1", outputs, out) == "complete"
    body = json.loads((kept / "manifest.json").read_text())
    assert body["hashes"] == "complete" and [f["path"] for f in body["files"]] == [
        f["path"] for f in out["files"]
    ]
    for entry in body["files"]:
        assert entry["sha256"] == hashlib.sha256((outputs / entry["path"]).read_bytes()).hexdigest()
    assert store.manifest("r1") == body["files"]


def test_exclude_globs_skip_files(outputs: Path, tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    out = store.upload("r2", outputs, exclude=["*.tmp", "cache"])
    assert [f["path"] for f in out["files"]] == ["checkpoints/step-1.pt", "model.pt"]
    assert not (tmp_path / "store" / "runs" / "r2" / "cache").exists()
    assert output_files(outputs, ["*"]) == []


def test_an_unwritable_root_is_reported_not_raised(outputs: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(artifacts, "BACKOFF", (0.0,))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = ArtifactStore((blocker / "store").as_uri()).upload("r3", outputs)
    assert out["status"] == "failed" and out["count"] == 0
    assert "a-file" in out["error"], out


def test_an_unknown_scheme_names_the_setting(outputs: Path) -> None:
    out = ArtifactStore("nosuchscheme://bucket/x").upload("r4", outputs)
    assert out["status"] == "failed"
    assert "artifact_root" in out["error"] and "CELERY_AGENT_ARTIFACT_ROOT" in out["error"]


def test_a_password_in_the_root_is_refused_and_never_shown(outputs: Path, tmp_path: Path):
    with pytest.raises(ConfigError) as info:
        ArtifactStore("s3://key:hunter2@bucket/x")
    assert "hunter2" not in str(info.value) and "environment" in str(info.value)
    assert safe_url("s3://key:hunter2@bucket/x") == "s3://bucket/x"
    settings = Settings(home=tmp_path, artifact_root="s3://key:hunter2@bucket/x")
    out = upload_run(settings, outputs.parent, [])
    line = artifacts.describe(out) or ""
    assert out["status"] == "failed" and "hunter2" not in json.dumps(out) + line
    assert line.startswith("artifacts: failed (")


def test_the_default_root_is_under_home(outputs: Path, tmp_path: Path) -> None:
    out = upload_run(Settings(home=tmp_path / "home"), outputs.parent, [])
    assert out["status"] == "uploaded"
    assert (tmp_path / "home" / "artifacts" / "runs" / "run-1" / "model.pt").is_file()
    assert "4 file(s)" in (artifacts.describe(out) or "")


def test_an_empty_output_folder_keeps_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = ArtifactStore((tmp_path / "store").as_uri()).upload("r5", tmp_path / "empty")
    assert out["status"] == "empty" and out["count"] == 0


def test_fetch_checks_each_file_against_the_manifest(outputs: Path, tmp_path: Path) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    out = store.upload("r6", outputs)
    digests.finish(None, "r6", outputs, out)
    out["files"] = store.manifest("r6")
    assert all(f.get("sha256") for f in out["files"])
    got = fetch(store, "r6", out["files"], tmp_path / "dest")
    assert sorted(p.relative_to(tmp_path / "dest").as_posix() for p in got) == sorted(
        f["path"] for f in out["files"]
    )
    assert (tmp_path / "dest" / "model.pt").read_bytes() == (outputs / "model.pt").read_bytes()
    assert store.manifest("r6") == out["files"]
    (tmp_path / "store" / "runs" / "r6" / "model.pt").write_bytes(b"changed")
    with pytest.raises(ConfigError, match="sha256"):
        fetch(store, "r6", out["files"], tmp_path / "dest2")
    with pytest.raises(ConfigError, match="leaves"):
        fetch(store, "r6", [{"path": "../escape", "size": 1}], tmp_path / "dest3")


def test_of_run_reads_the_store_manifest_when_the_record_holds_part_of_it(
    outputs: Path, tmp_path: Path
) -> None:
    store = ArtifactStore((tmp_path / "store").as_uri())
    kept = store.upload("r7", outputs)
    partial = kept | {"files": kept["files"][:1]}  # as when a run kept more than RECORD_FILES
    got_store, files = artifacts.of_run({"run_id": "r7", "artifacts": partial})
    assert got_store.url == store.url and files == kept["files"]
    with pytest.raises(ConfigError, match="kept no artifacts"):
        artifacts.of_run({"run_id": "r8", "state": "running"})


def test_a_file_that_fails_twice_is_retried_and_kept(outputs: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(artifacts, "BACKOFF", (0.0,))
    real, calls = ArtifactStore._copy, {"n": 0}

    def flaky(self, local, remote, rel, *more):
        if rel == "model.pt" and calls["n"] < artifacts.TRIES - 1:
            calls["n"] += 1
            raise OSError("store away")
        return real(self, local, remote, rel, *more)

    monkeypatch.setattr(ArtifactStore, "_copy", flaky)
    out = ArtifactStore((tmp_path / "store").as_uri()).upload("r9", outputs)
    assert calls["n"] == artifacts.TRIES - 1
    assert out["status"] == "uploaded" and out["count"] == 4, out
    monkeypatch.setattr(artifacts, "TRIES", 2)  # now it fails every try it gets
    calls["n"] = -10
    out = ArtifactStore((tmp_path / "store2").as_uri()).upload("r9", outputs)
    assert out["status"] == "failed" and out["count"] == 3
    assert out["error"] == "model.pt: OSError: store away (1 file(s) not kept)"
