"""Inputs from earlier runs and from URLs, fetched by a real worker into its input cache, and
`celery-agent pull`: a run writes model.pt, the next reads it through run://, a third finds it
cached; bad inputs fail at submit or on the run, naming inputs.NAME."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import test_docker_executor
from conftest import Worker

from celery_agent import TaskSpec, get_run, submit, submit_task
from celery_agent.cli import main
from celery_agent.errors import SpecError
from celery_agent.inputcache import InputCache
from celery_agent.testing import init_repo, wait_for

pytestmark = pytest.mark.integration

WRITE = textwrap.dedent(
    """\
    import os, pathlib
    out = pathlib.Path(os.environ["CELERY_AGENT_OUTPUT_DIR"])
    (out / "model.pt").write_bytes(os.environ["TAG"].encode() * 300_000)
    (out / "plots").mkdir()
    (out / "plots" / "loss.txt").write_text("0.5 0.25\\n")
    """
)
READ = textwrap.dedent(
    """\
    import hashlib, json, os, pathlib
    for name, path in sorted(json.loads(pathlib.Path(os.environ["CELERY_AGENT_INPUTS"]).read_text()).items()):
        p = pathlib.Path(path)
        assert str(p) == os.environ["CELERY_AGENT_INPUT_" + name.upper()]
        data = b"".join(f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()) if p.is_dir() else p.read_bytes()
        print(f"input {name}: {hashlib.sha256(data).hexdigest()} dir={p.is_dir()}", flush=True)
    """
)


def job(repo: Path, queue: str, entry: str, **fields: object) -> TaskSpec:
    return TaskSpec(repo=str(repo), entry=entry, queue=queue, executor="local",
                    python=sys.executable, **fields)  # type: ignore[arg-type]  # fmt: skip


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def setup(redis_url: str, tmp_path_factory: pytest.TempPathFactory, s3: Any):
    """(worker, repo, the run that wrote model.pt and plots/), shared by the module's tests; the
    worker has credentials for the S3 server in its environment."""
    base = tmp_path_factory.mktemp("inputs")
    root = (base / "store").as_uri()
    w = Worker(base / "home", redis_url, f"in-{uuid.uuid4().hex[:6]}", concurrency=2,
               CELERY_AGENT_ARTIFACT_ROOT=root, **s3.env()).start()  # fmt: skip
    repo = base / "repo"
    repo.mkdir()
    init_repo(repo, {"write.py": WRITE, "read.py": READ})
    first = submit(job(repo, w.queues, "write.py", env={"TAG": "m1"}))
    assert first.wait(90)["state"] == "succeeded", list(first.logs())
    yield w, repo, first
    w.stop()


def printed(run_id: str, name: str) -> str:
    lines = [x for x in get_run(run_id).logs() if x.startswith(f"input {name}: ")]
    assert len(lines) == 1, list(get_run(run_id).logs())
    return lines[0].split(": ", 1)[1]


def test_a_run_reads_an_earlier_runs_output_and_the_next_finds_it_cached(setup, capsys):
    w, repo, first = setup
    model = b"m1" * 300_000
    url = f"run://{first.id[:10]}/model.pt"  # a prefix of the id, as elsewhere
    second = submit(job(repo, w.queues, "read.py",
                        inputs={"model": url, "plots": f"run://{first.id}/plots/"}))  # fmt: skip
    rec = second.wait(90)
    assert rec["state"] == "succeeded", list(second.logs())
    assert rec["spec"]["inputs"]["model"] == f"run://{first.id}/model.pt", "the full id is kept"
    assert printed(second.id, "model") == f"{sha(model)} dir=False"
    assert printed(second.id, "plots") == f"{sha(b'0.5 0.25' + bytes([10]))} dir=True"
    assert rec["inputs"]["model"]["cached"] is False and "inputs" in rec["timings"]
    cache = w.home / "cache" / "inputs"
    path = Path(rec["inputs"]["model"]["path"])
    assert path.parent.parent == cache and path.read_bytes() == model
    inode = path.stat().st_ino

    third = submit(job(repo, w.queues, "read.py", inputs={"model": url}))
    rec3 = third.wait(90)
    assert rec3["state"] == "succeeded", list(third.logs())
    assert rec3["inputs"]["model"] == rec["inputs"]["model"] | {"cached": True}
    assert path.stat().st_ino == inode, "not downloaded again"
    assert printed(third.id, "model") == f"{sha(model)} dir=False"
    assert any(x.endswith("(cached)") for x in third.logs() if "input model:" in x)
    capsys.readouterr()
    assert main(["show", third.id]) == 0
    assert f"run://{first.id}/model.pt (cached)" in capsys.readouterr().out
    assert [p for p in cache.iterdir() if p.name.startswith(".part")] == [], "no parts left"
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]
    removed = InputCache(cache).evict(0)  # every run let go of its inputs as it ended
    assert path.parent.name in removed and not path.exists()


def test_two_runs_wanting_a_new_input_at_once_download_it_once(setup, tmp_path: Path):
    w, repo, _ = setup
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(3 * 2**20))
    spec = job(repo, w.queues, "read.py", inputs={"data": data.as_uri()})
    runs = [submit(spec), submit(spec)]
    recs = [r.wait(90) for r in runs]
    assert [r["state"] for r in recs] == ["succeeded"] * 2, [list(r.logs()) for r in runs]
    assert sorted(r["inputs"]["data"]["cached"] for r in recs) == [False, True]
    assert {printed(r.id, "data") for r in runs} == {f"{sha(data.read_bytes())} dir=False"}
    data.write_bytes(b"changed")  # new content: a new key, fetched again
    rec = submit(spec).wait(90)
    assert rec["inputs"]["data"]["cached"] is False
    assert Path(rec["inputs"]["data"]["path"]).read_bytes() == b"changed"


def test_bad_inputs_are_refused_at_submit_or_fail_the_run_naming_the_input(setup, tmp_path, capsys):
    w, repo, first = setup
    with pytest.raises(SpecError, match=r"inputs\.model.*kept no file 'nope\.pt'") as err:
        submit(job(repo, w.queues, "read.py", inputs={"model": f"run://{first.id}/nope.pt"}))
    assert err.value.field == "inputs.model" and "celery-agent artifacts" in str(err.value)
    with pytest.raises(SpecError, match=r"inputs\.model: run 'no-such-run'"):
        submit(job(repo, w.queues, "read.py", inputs={"model": "run://no-such-run/m.pt"}))
    with pytest.raises(SpecError, match=r"inputs\.data .*unknown URL scheme 'nosuch'"):
        job(repo, w.queues, "read.py", inputs={"data": "nosuch://x/y"})
    capsys.readouterr()
    assert main(["rerun", first.id, "--input", f"model=run://{first.id[:9]}/nope.pt"]) == 1
    assert "inputs.model" in capsys.readouterr().err, "rerun --input is checked as submit is"
    missing = (tmp_path / "missing.parquet").as_uri()
    r = submit_task.delay(job(repo, w.queues, "read.py", inputs={"data": missing}))
    out = r.get(timeout=90)
    assert out["status"] == "failed" and out["error_stage"] == "inputs", out
    assert "inputs.data" in out["error"] and "does not exist" in out["error"]
    assert "input data" not in "".join(get_run(r.id).logs()), "the entry never started"


def test_pull_one_file_all_files_and_from_python(setup, tmp_path: Path, capsys):
    _, _, first = setup
    model = b"m1" * 300_000
    capsys.readouterr()
    assert main(["pull", first.id, "model.pt", "-o", str(tmp_path / "one"), "--progress"]) == 0
    out, err = capsys.readouterr()
    assert (tmp_path / "one" / "model.pt").read_bytes() == model
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["model.pt"]
    assert out.split() == [str((tmp_path / "one" / "model.pt").resolve())]
    assert "600.0 kB" in err or "model.pt" in err, err  # the progress bar, on stderr
    assert main(["pull", first.id[:10], "-o", str(tmp_path / "all")]) == 0
    assert capsys.readouterr().err == f"2 file(s) in {tmp_path / 'all'}\n", "no bar: no tty"
    assert (tmp_path / "all" / "plots" / "loss.txt").read_text() == "0.5 0.25\n"
    assert (tmp_path / "all" / "model.pt").read_bytes() == model
    assert main(["pull", first.id, "nope.pt", "-o", str(tmp_path / "x")]) == 1
    assert "kept no file or folder 'nope.pt'" in capsys.readouterr().err
    got = first.pull(paths=["plots"], dest=tmp_path / "py")
    assert got == [(tmp_path / "py" / "plots" / "loss.txt").resolve()]
    assert main(["artifacts", first.id]) == 0
    table = capsys.readouterr().out
    assert "plots/loss.txt" in table and "600.0 kB" in table and "when" in table
    assert json.dumps(first.artifacts()) == json.dumps(first.info()["artifacts"]["files"])


docker_client = test_docker_executor.docker_client  # (the engine, the test image built)


def test_a_container_run_reads_its_inputs(setup, docker_client):
    w, repo, first = setup
    spec = TaskSpec.parse({"repo": str(repo), "entry": "read.py", "queue": w.queues,
                           "executor": "docker", "requirements": [], "docker": {"image": test_docker_executor.IMAGE},
                           "inputs": {"model": f"run://{first.id}/model.pt",
                                      "plots": f"run://{first.id}/plots/"}})  # fmt: skip
    run = submit(spec)
    rec = run.wait(120)
    assert rec["state"] == "succeeded", list(run.logs())
    assert printed(run.id, "model") == f"{sha(b'm1' * 300_000)} dir=False"
    assert printed(run.id, "plots") == f"{sha(b'0.5 0.25' + bytes([10]))} dir=True"


def test_an_input_whose_run_still_uploads_waits_for_the_upload(setup, store):
    w, repo, first = setup
    key, kept = store.keys.run(first.id), first.info()["artifacts"]
    store.r.hset(key, "artifacts", json.dumps({"status": "uploading", "root": kept["root"]}))
    try:  # (as a worker records outputs it uploads in the background, artifact_wait passed)
        spec = job(repo, w.queues, "read.py", inputs={"later": f"run://{first.id[:10]}/model.pt"})
        run = submit(spec)  # accepted: its path is checked once the upload ended
        assert run.info()["spec"]["inputs"]["later"] == f"run://{first.id}/model.pt"
        cancelled = submit(spec)
        for r in (run, cancelled):
            wait_for(
                "the run to wait for the upload",
                lambda r=r: any("finish uploading" in x for x in r.logs()),
                60,
            )
        assert run.state == cancelled.state == "preparing"
        cancelled.cancel()  # while its inputs stage waits
        ended = cancelled.wait(30)
        assert ended["state"] == "aborted" and "cancelled" in ended["error"], ended
    finally:
        store.r.hset(key, "artifacts", json.dumps(kept))
    rec = run.wait(90)
    assert rec["state"] == "succeeded", list(run.logs())
    assert printed(run.id, "later") == f"{sha(b'm1' * 300_000)} dir=False"


def test_an_input_of_a_run_whose_hashes_never_came_is_read_once_they_are_overdue(setup, store):
    w, repo, first = setup
    key = store.keys.run(first.id)
    kept = wait_for(
        "the kept files hashed",
        lambda: (a := first.info()["artifacts"]).get("hashes") == "complete" and a,
        30,
    )
    unhashed = kept | {"hashes": "pending", "hashed_by": time.time() + 3,
                       "files": [{k: v for k, v in f.items() if k != "sha256"}
                                 for f in kept["files"]]}  # fmt: skip
    store.r.hset(key, "artifacts", json.dumps(unhashed))  # (its worker died before it hashed)
    try:
        run = submit(job(repo, w.queues, "read.py", inputs={"m": f"run://{first.id}/model.pt"}))
        rec = run.wait(90)
    finally:
        store.r.hset(key, "artifacts", json.dumps(kept))
    assert rec["state"] == "succeeded", list(run.logs())
    assert printed(run.id, "m") == f"{sha(b'm1' * 300_000)} dir=False"
    assert rec["inputs"]["m"]["cached"] is False, "keyed by the store's copy, not its sha256"


def test_an_s3_input_is_fetched_with_the_workers_credentials_and_keyed_by_its_etag(
    s3, setup, store
):
    w, repo, _ = setup
    bucket = s3.bucket(f"in{uuid.uuid4().hex[:10]}")
    s3.fs().pipe(f"{bucket}/data/x.bin", b"v1" * 50_000)
    s3.fs().pipe(f"{bucket}/data/y.bin", b"y")
    inputs = {"data": f"s3://{bucket}/data/x.bin", "folder": f"s3://{bucket}/data/"}
    spec = job(repo, w.queues, "read.py", inputs=inputs)
    first, again = (submit(spec).wait(90) for _ in range(2))
    assert first["state"] == again["state"] == "succeeded", list(get_run(first["run_id"]).logs())
    assert printed(first["run_id"], "data") == f"{sha(b'v1' * 50_000)} dir=False"
    assert printed(first["run_id"], "folder") == f"{sha(b'v1' * 50_000 + b'y')} dir=True"
    assert [again["inputs"][n]["cached"] for n in ("data", "folder")] == [True, True]
    s3.fs().pipe(f"{bucket}/data/x.bin", b"v2" * 50_000)  # same size, a new ETag
    third = submit(spec).wait(90)
    assert third["state"] == "succeeded", (
        third.get("error"),
        list(get_run(third["run_id"]).logs()),
    )
    assert [third["inputs"][n]["cached"] for n in ("data", "folder")] == [False, False]
    assert printed(third["run_id"], "data") == f"{sha(b'v2' * 50_000)} dir=False"
    missing = submit(job(repo, w.queues, "read.py", inputs={"data": f"s3://{bucket}/nope"}))
    out = missing.wait(90)
    assert out["state"] == "failed" and "inputs.data" in out["error"], out
    assert "does not exist" in out["error"] and out["error_stage"] == "inputs"
    for run in (first, third, out):
        text = json.dumps(store.get(run["run_id"])) + "".join(get_run(run["run_id"]).logs())
        assert s3.secret not in text and s3.key not in text
