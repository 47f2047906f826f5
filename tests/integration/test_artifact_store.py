"""A run's outputs kept in a file:// artifact store by a real worker: succeeded and failed runs,
exclude globs, `celery-agent artifacts --get` from the store, a cancelled run, and a store it
cannot write to."""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
import uuid
from pathlib import Path

import pytest

from celery_agent import get_run, submit_task
from celery_agent.cli import main
from celery_agent.spec import TaskSpec
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration

JOB = textwrap.dedent(
    """\
    import os, pathlib, sys
    out = pathlib.Path(os.environ["CELERY_AGENT_OUTPUT_DIR"])
    (out / "plots").mkdir()
    (out / "model.pt").write_bytes(b"weights-" + os.environ["TAG"].encode() * 5000)
    (out / "plots" / "loss.txt").write_text("0.5 0.25\\n")
    (out / "scratch.tmp").write_text("not kept")
    print("wrote outputs", flush=True)
    sys.exit(int(os.environ.get("EXIT", "0")))
    """
)


def spec(repo: Path, queue: str, tag: str, **env: str) -> TaskSpec:
    return TaskSpec(
        repo=str(repo), entry="job.py", queue=queue, executor="local",
        env={"TAG": tag, **env}, output_exclude=["*.tmp"],
    )  # fmt: skip


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hashed(kept: dict) -> dict | None:
    """``kept`` once its sha256 are all there, else None."""
    return kept if kept.get("hashes") == "complete" else None


def test_outputs_of_succeeded_and_failed_runs_reach_the_store(
    make_worker, make_repo, store, tmp_path: Path, capsys
):
    root = tmp_path / "shared-store"  # a folder of its own, not under the worker's home
    w = make_worker(f"art-{uuid.uuid4().hex[:6]}", CELERY_AGENT_ARTIFACT_ROOT=root.as_uri())
    repo = make_repo({"job.py": JOB})
    ok = submit_task.delay(spec(repo, w.queues, "ok"))
    bad = submit_task.delay(spec(repo, w.queues, "bad", EXIT="3"))
    assert ok.get(timeout=90)["status"] == "succeeded"
    out = bad.get(timeout=90)
    assert out["status"] == "failed" and out["exit_code"] == 3, out
    assert out["artifacts"]["status"] == "uploaded", "a failed run's outputs are kept too"
    for run, tag in ((ok.id, b"ok"), (bad.id, b"bad")):
        # the sha256 follow the run's end, computed by its worker from the files it still has
        kept = wait_for(
            "the sha256 of the kept files", lambda run=run: hashed(store.get(run)["artifacts"]), 30
        )
        assert kept["status"] == "uploaded" and kept["url"] == f"{root.as_uri()}/runs/{run}"
        manifest = json.loads((root / "runs" / run / "manifest.json").read_text())
        assert manifest == {"hashes": "complete", "files": kept["files"]}
        model = b"weights-" + tag * 5000
        assert {f["path"]: (f["size"], f["sha256"]) for f in kept["files"]} == {
            "model.pt": (len(model), sha(model)),
            "plots/loss.txt": (9, sha(b"0.5 0.25\n")),
        }, "the manifest is right and *.tmp is excluded"
        assert (root / "runs" / run / "model.pt").read_bytes() == model
        assert not (root / "runs" / run / "scratch.tmp").exists()
        assert any("[celery-agent] artifacts: 2 file(s)" in line for line in store.read_log(run)[1])
    capsys.readouterr()
    dest = tmp_path / "fetched"
    assert main(["artifacts", ok.id, "--get", str(dest)]) == 0
    assert (dest / "model.pt").read_bytes() == b"weights-" + b"ok" * 5000
    assert (dest / "plots" / "loss.txt").read_text() == "0.5 0.25\n"
    pulled = get_run(bad.id).pull(tmp_path / "pulled")  # the same from Python
    assert sorted(p.name for p in pulled) == ["loss.txt", "model.pt"]
    assert get_run(bad.id).artifacts() == store.get(bad.id)["artifacts"]["files"]
    assert main(["artifacts", ok.id]) == 0 and main(["show", ok.id]) == 0
    shown = capsys.readouterr().out
    assert "plots/loss.txt" in shown and "uploaded: 2 file(s)" in shown


def test_an_unwritable_store_is_reported_on_the_run_and_its_result_still_arrives(
    make_worker, make_repo, store, tmp_path: Path, capsys
):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the store's folder should be")
    root = (blocker / "store").as_uri()
    w = make_worker(f"art-{uuid.uuid4().hex[:6]}", CELERY_AGENT_ARTIFACT_ROOT=root)
    r = submit_task.delay(spec(make_repo({"job.py": JOB}), w.queues, "x"))
    out = r.get(timeout=90)
    assert out["status"] == "succeeded", "the upload's failure does not change the outcome"
    kept = store.get(r.id)["artifacts"]
    assert kept["status"] == "failed" and "a-file" in kept["error"], kept
    lines = store.read_log(r.id)[1]
    assert any(line.startswith("[celery-agent] artifacts: failed (") for line in lines), lines
    assert Path(store.get(r.id)["output_dir"], "model.pt").is_file(), "nothing lost locally"
    capsys.readouterr()
    assert main(["show", r.id]) == 0
    shown = capsys.readouterr().out
    assert "artifacts" in shown and "failed (" in shown and "not kept" in shown
    assert json.dumps(out["artifacts"]) == json.dumps(kept)


def test_a_cancelled_runs_outputs_are_kept(make_worker, make_repo, store, tmp_path: Path):
    root = tmp_path / "store"
    w = make_worker(f"art-{uuid.uuid4().hex[:6]}", CELERY_AGENT_ARTIFACT_ROOT=root.as_uri())
    job = JOB.replace("sys.exit(", "import time; time.sleep(600); sys.exit(")
    r = submit_task.delay(spec(make_repo({"job.py": job}), w.queues, "c", EXIT="0"))
    wait_for("the outputs written", lambda: "wrote outputs" in store.read_log(r.id)[1], 60)
    get_run(r.id).cancel()
    out = r.get(timeout=60)
    assert out["status"] == "aborted", out
    assert out["artifacts"]["status"] == "uploaded" and out["artifacts"]["count"] == 2
    assert (root / "runs" / r.id / "plots" / "loss.txt").read_text() == "0.5 0.25\n"


@pytest.mark.parametrize(
    ("root", "says"),
    [("nosuchscheme://bucket/x", "fsspec knows no nosuchscheme://"), ("gs://bucket/x", "gcsfs")],
)
def test_submit_refuses_a_root_no_worker_could_open(make_repo, store, root: str, says: str):
    from celery_agent.app import use_environment
    from celery_agent.errors import ConfigError

    repo = make_repo({"job.py": JOB})
    before = store.r.zcard(store.keys.runs())
    os.environ["CELERY_AGENT_ARTIFACT_ROOT"] = root
    try:
        use_environment()
        with pytest.raises(ConfigError) as info:
            submit_task.delay(spec(repo, "nowhere", "x"))
    finally:
        del os.environ["CELERY_AGENT_ARTIFACT_ROOT"]
        use_environment()
    assert says in str(info.value) and "CELERY_AGENT_ARTIFACT_ROOT" in str(info.value)
    assert store.r.zcard(store.keys.runs()) == before, "nothing was queued"
