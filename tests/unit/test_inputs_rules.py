"""Inputs without services: URLs checked, run:// resolved through a record, the input cache's
one download per key under concurrency, cancel and deadline, and what pull selects."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import fsspec
import pytest

from celery_agent.errors import Cancelled, ConfigError, SpecError, StageTimeout, UnknownRunError
from celery_agent.inputcache import InputCache
from celery_agent.inputs import RunRef, check_names, checked, resolve
from celery_agent.pull import select
from celery_agent.spec import TaskSpec
from celery_agent.transfer import Mismatch, copy_checked


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture()
def kept(tmp_path: Path) -> dict[str, Any]:
    """The record of a run whose outputs (model.pt, plots/a.txt, plots/b.txt) are in a store."""
    files = {"model.pt": b"weights" * 1000, "plots/a.txt": b"a", "plots/b.txt": b"bb"}
    run = tmp_path / "store" / "runs" / "run-1"
    for rel, data in files.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(data)
    manifest = [{"path": k, "size": len(v), "sha256": sha(v)} for k, v in files.items()]
    root = (tmp_path / "store").as_uri()
    return {"run_id": "run-1", "state": "succeeded",
            "artifacts": {"root": root, "files": manifest, "count": 3}}  # fmt: skip


def lookup_of(record: dict[str, Any]):
    def lookup(ref: str) -> dict[str, Any]:
        if not record["run_id"].startswith(ref):
            raise UnknownRunError(f"no run has the id, id prefix or name {ref!r}", "check it")
        return record

    return lookup


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("data.parquet", "is not a URL"),
        ("/abs/data.parquet", "is not a URL"),
        ("nosuch://bucket/x", "unknown URL scheme 'nosuch'"),
        ("s3://key:secret@bucket/x", "carries a password"),
        ("run:///model.pt", "names no run"),
    ],
)
def test_a_bad_input_url_is_refused_naming_the_input(url: str, problem: str):
    with pytest.raises(SpecError, match="inputs") as err:
        TaskSpec(repo=".", entry="t.py", inputs={"data": url})
    assert "inputs.data" in str(err.value) and problem in str(err.value)
    assert "secret" not in str(err.value)


def test_input_names_must_be_variable_names_and_differ_beyond_case():
    with pytest.raises(ValueError, match="'my-data' is not valid"):
        check_names(["my-data"])
    with pytest.raises(ValueError, match="CELERY_AGENT_INPUT_MODEL"):
        check_names(["model", "MODEL"])
    spec = TaskSpec(repo=".", entry="t.py", inputs={"model": " run://abc/m.pt ", "d": "s3://b/k"})
    assert spec.inputs == {"model": "run://abc/m.pt", "d": "s3://b/k"}
    assert TaskSpec.parse(spec.to_json()).inputs == spec.inputs


def test_run_refs_name_a_file_a_folder_or_the_whole_run():
    assert RunRef.parse("run://abc/m/model.pt") == RunRef("abc", "m/model.pt", False)
    assert RunRef.parse("run://abc/plots/") == RunRef("abc", "plots", True)
    assert RunRef.parse("run://abc") == RunRef("abc", "", True)
    assert RunRef.parse("run://abc/plots/").url("abc-full") == "run://abc-full/plots/"
    assert RunRef.parse("s3://b/k") is None


def test_run_inputs_resolve_through_the_record_and_key_by_content(kept):
    lookup = lookup_of(kept)
    model = resolve("model", "run://run/model.pt", lookup)
    assert [(e.rel, e.size) for e in model.entries] == [("", 7000)]
    assert not model.folder and model.local_name == "model.pt"
    plots = resolve("plots", "run://run-1/plots/", lookup)
    assert plots.folder and [e.rel for e in plots.entries] == ["a.txt", "b.txt"]
    changed = dict(kept, artifacts=dict(kept["artifacts"], count=1, files=[
        dict(kept["artifacts"]["files"][0], sha256=sha(b"other"))]))  # fmt: skip
    assert resolve("model", "run://run-1/model.pt", lookup_of(changed)).key != model.key
    assert resolve("m", "run://run-1/model.pt", lookup).key == model.key, "the name is no part"


def test_run_inputs_that_cannot_be_found_name_the_input_and_the_fix(kept):
    lookup = lookup_of(kept)
    with pytest.raises(SpecError, match=r"inputs.model .*kept no file 'm.pt'") as err:
        resolve("model", "run://run-1/m.pt", lookup)
    assert err.value.field == "inputs.model" and "celery-agent artifacts run-1" in str(err.value)
    with pytest.raises(SpecError, match=r"inputs.model: run 'zzz': no run has"):
        resolve("model", "run://zzz/m.pt", lookup)
    early = {"run_id": "run-1", "state": "failed"}  # (its source stage failed)
    with pytest.raises(SpecError, match="kept no outputs: it ended failed before it began"):
        resolve("model", "run://run-1/m.pt", lookup_of(early))
    running = {"run_id": "run-1", "state": "running"}
    with pytest.raises(SpecError, match="kept no outputs yet .state running.*wait run-1"):
        resolve("model", "run://run-1/m.pt", lookup_of(running))
    busy = {"run_id": "run-1", "state": "succeeded", "artifacts": {"status": "uploading"}}
    assert checked({"m": "run://run/not-yet.pt"}, lookup_of(busy)) == {
        "m": "run://run-1/not-yet.pt"}, "checked by the worker, once the upload ended"  # fmt: skip
    assert checked({"model": "run://run/model.pt", "x": "s3://b/k"}, lookup) == {
        "model": "run://run-1/model.pt", "x": "s3://b/k"}  # fmt: skip


def test_a_url_input_is_keyed_by_size_and_mtime_and_a_missing_one_is_named(tmp_path: Path):
    data = tmp_path / "data.csv"
    data.write_text("a,b\n")
    first = resolve("data", data.as_uri(), lookup_of({"run_id": "-"}))
    assert resolve("data", data.as_uri(), lookup_of({"run_id": "-"})).key == first.key
    data.write_text("a,b,c\n")
    assert resolve("data", data.as_uri(), lookup_of({"run_id": "-"})).key != first.key
    with pytest.raises(SpecError, match=r"inputs.gone .*does not exist") as err:
        resolve("gone", (tmp_path / "gone").as_uri(), lookup_of({"run_id": "-"}))
    assert err.value.field == "inputs.gone"


class SlowFS:
    """A remote filesystem whose reads are slow, counting the files it opened."""

    protocol = ("slow",)

    def __init__(self, delay: float = 0.05) -> None:
        self.local = fsspec.filesystem("file")
        self.opened = 0
        self.delay = delay

    def open(self, path: str, mode: str) -> Any:
        self.opened += 1
        handle = self.local.open(path, mode)
        read = handle.read

        def slow(n: int = -1) -> bytes:
            time.sleep(self.delay)
            return bytes(read(min(n, 1000)))

        handle.read = slow
        return handle


def test_concurrent_fetches_of_one_input_download_it_once_and_never_show_a_part(
    kept, tmp_path: Path
):
    source = resolve("model", "run://run-1/model.pt", lookup_of(kept))
    slow = SlowFS()
    source = type(source)(**{**source.__dict__, "fs": slow})
    cache = InputCache(tmp_path / "cache")
    seen_partial: list[int] = []
    done = threading.Event()

    def watch() -> None:  # the target is absent or whole, never partly written
        while not done.is_set():
            path = cache.path(source)
            if path.exists() and path.stat().st_size != 7000:
                seen_partial.append(path.stat().st_size)

    watcher = threading.Thread(target=watch)
    watcher.start()
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(cache.fetch(source)))
               for _ in range(4)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    done.set()
    watcher.join(5)
    assert slow.opened == 1 and not seen_partial
    assert sorted(r.hit for r in results) == [False, True, True, True]
    assert {r.path for r in results} == {cache.path(source)}
    assert cache.path(source).read_bytes() == b"weights" * 1000
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".part")] == []
    assert cache.evict(0) == [], "every run still holds it"
    for r in results:
        r.release()
    assert cache.evict(0) == [source.key]


def test_a_cancel_or_the_deadline_ends_a_fetch_and_leaves_nothing_that_looks_complete(
    kept, tmp_path: Path
):
    source = resolve("model", "run://run-1/model.pt", lookup_of(kept))
    source = type(source)(**{**source.__dict__, "fs": SlowFS(0.2)})
    cache = InputCache(tmp_path / "cache")
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    with pytest.raises(Cancelled, match="input model"):
        cache.fetch(source, stop.is_set)
    assert not cache.path(source).exists()
    assert list((tmp_path / "cache").glob(".part*")) == []
    with pytest.raises(StageTimeout, match="inputs.model") as err:
        cache.fetch(source, timeout=0.3)
    assert err.value.stage == "inputs" and not cache.path(source).exists()


def test_a_file_that_does_not_match_its_manifest_is_refused(kept, tmp_path: Path):
    store = Path(fsspec.core.url_to_fs(kept["artifacts"]["root"])[1])
    (store / "runs" / "run-1" / "model.pt").write_bytes(b"tampered" * 875)  # same size
    source = resolve("model", "run://run-1/model.pt", lookup_of(kept))
    with pytest.raises(SpecError, match=r"inputs.model .*changed in its store.*sha256"):
        InputCache(tmp_path / "cache").fetch(source)
    target = tmp_path / "t.bin"
    with pytest.raises(Mismatch):
        copy_checked(fsspec.filesystem("file"), str(store / "runs/run-1/model.pt"), target,
                     sha256=sha(b"weights" * 1000))  # fmt: skip
    assert list(tmp_path.glob("*t.bin*")) == []


def test_pull_selects_files_and_folders_of_the_manifest(kept):
    files = kept["artifacts"]["files"]
    assert [f["path"] for f in select(files, [], "r")] == ["model.pt", "plots/a.txt", "plots/b.txt"]
    assert [f["path"] for f in select(files, ["plots/", "model.pt"], "r")] == [
        "model.pt", "plots/a.txt", "plots/b.txt"]  # fmt: skip
    assert [f["path"] for f in select(files, ["plots/b.txt"], "r")] == ["plots/b.txt"]
    with pytest.raises(ConfigError, match="kept no file or folder 'plot'"):
        select(files, ["plot"], "r")


def test_a_container_run_mounts_its_inputs_read_only_at_their_own_paths(tmp_path: Path):
    from celery_agent.executors.base import RunRequest
    from celery_agent.executors.docker import mount_plan

    cache = tmp_path / "cache" / "inputs"
    env = {"CELERY_AGENT_RUN_DIR": str(tmp_path / "run"),
           "CELERY_AGENT_INPUT_MODEL": str(cache / "k1" / "model.pt"),
           "CELERY_AGENT_INPUT_PLOTS": str(cache / "k2" / "plots"),
           "CELERY_AGENT_INPUTS": str(tmp_path / "run" / "inputs.json")}  # fmt: skip
    job = RunRequest(env=env, cwd=tmp_path / "src", sink=lambda lines: None,
                     source_dir=tmp_path / "src", output_dir=tmp_path / "out")  # fmt: skip
    paths = mount_plan(job)
    mounted = {m.source: (m.target, m.read_only) for m in paths.mounts}
    assert mounted[str(cache / "k1")] == (str(cache / "k1"), True)
    assert mounted[str(cache / "k2")] == (str(cache / "k2"), True)
    assert paths.translate(env["CELERY_AGENT_INPUT_MODEL"]) == env["CELERY_AGENT_INPUT_MODEL"]
    assert paths.translate(env["CELERY_AGENT_INPUTS"]) == "/celery-agent/run/inputs.json"


def test_eviction_removes_the_least_recently_used_inputs_no_run_holds(kept, tmp_path: Path):
    lookup = lookup_of(kept)
    cache = InputCache(tmp_path / "cache")
    model = cache.fetch(resolve("model", "run://run-1/model.pt", lookup))  # 7000 bytes
    plots = cache.fetch(resolve("plots", "run://run-1/plots/", lookup))  # 3 bytes
    old = time.time() - 3600
    os.utime(model.path.parent, (old, old))  # the model: the least recently used
    assert cache.evict(0) == []
    assert model.path.exists() and plots.path.exists(), "both held by a run: none evicted"
    plots.release()
    assert cache.evict(7003) == [], "within the bound (7000 + 3 bytes): nothing to do"
    assert cache.evict(100) == [plots.path.parent.name]  # the model is held still
    model.release()
    assert cache.evict(0) == [model.path.parent.name] and not model.path.exists()
    again = cache.fetch(resolve("model", "run://run-1/model.pt", lookup))
    assert not again.hit and again.path.read_bytes() == b"weights" * 1000
    again.release()


def test_a_rerun_sets_or_replaces_inputs_by_name():
    from celery_agent.rerun import respec

    spec = {"repo": "/r", "entry": "t.py", "inputs": {"model": "run://a/m.pt", "d": "s3://b/k"}}
    record = {"run_id": "r1", "spec": spec}
    again = respec(record, inputs={"model": "run://b/m.pt"}, pin=False, environ={})
    assert again.inputs == {"model": "run://b/m.pt", "d": "s3://b/k"}
    assert respec(record, pin=False, environ={}).inputs == spec["inputs"]


def test_the_ended_states_inputs_know_are_the_run_stores():
    from celery_agent.inputs import _ENDED
    from celery_agent.state import TERMINAL

    assert _ENDED == TERMINAL
