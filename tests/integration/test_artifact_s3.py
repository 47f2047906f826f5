"""A run's outputs kept in a real S3-compatible store (moto's server over HTTP) by a real worker
whose credentials come from its environment only: the files and manifest land in the bucket,
`celery-agent artifacts --get` fetches them, and the credentials are nowhere in Redis or the logs.
A bucket that does not exist and a store that does not answer are reported on the run, in the
worker's heartbeat and in `celery-agent status`; the worker stays healthy and nothing is lost."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from s3_support import read_only, read_tree

from celery_agent import get_run, submit, submit_task
from celery_agent.cli import main
from celery_agent.embedded import free_port
from celery_agent.serving import ArtifactStoreWarning
from celery_agent.spec import TaskSpec
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration

JOB = textwrap.dedent(
    """\
    import os, pathlib
    out = pathlib.Path(os.environ["CELERY_AGENT_OUTPUT_DIR"])
    (out / "plots").mkdir()
    (out / "model.pt").write_bytes(b"weights" * 3000)
    (out / "plots" / "loss.txt").write_text("0.5 0.25\\n")
    print("secret-looking vars the run sees:", sorted(k for k in os.environ if "AWS" in k))
    """
)


BIG = textwrap.dedent(
    """\
    import os, pathlib
    out = pathlib.Path(os.environ["CELERY_AGENT_OUTPUT_DIR"])
    for i in range(4):
        (out / f"shard-{i}.bin").write_bytes(os.urandom(8 * 2**20))
    """
)


def spec(repo: Path, queue: str) -> TaskSpec:
    return TaskSpec(repo=str(repo), entry="job.py", queue=queue, executor="local")


def everything_in(r: Any) -> str:
    """Every value Redis holds (records, log and metric streams, Celery results, heartbeats)."""
    out = []
    for key in r.scan_iter("*", count=1000):
        kind = r.type(key)
        if kind == "string":
            out.append(str(r.get(key)))
        elif kind == "hash":
            out.append(json.dumps(r.hgetall(key)))
        elif kind == "stream":
            out.append(json.dumps(r.xrange(key)))
        elif kind == "list":
            out.append(json.dumps(r.lrange(key, 0, -1)))
        elif kind in ("set", "zset"):
            out.append(
                json.dumps(sorted(r.smembers(key) if kind == "set" else r.zrange(key, 0, -1)))
            )
    return "\n".join(out)


def test_outputs_land_in_the_bucket_and_credentials_stay_out(
    s3, make_worker, make_repo, store, tmp_path: Path
):
    bucket = s3.bucket(f"b{uuid.uuid4().hex[:10]}")
    root = f"s3://{bucket}/team/artifacts"
    w = make_worker(f"s3-{uuid.uuid4().hex[:6]}", CELERY_AGENT_ARTIFACT_ROOT=root,
                    CELERY_AGENT_ARTIFACT_WAIT="0", **s3.env())  # fmt: skip
    repo = make_repo({"job.py": JOB, "big.py": BIG})
    r = submit_task.delay(spec(repo, w.queues))
    out = r.get(timeout=120)
    assert out["status"] == "succeeded", out
    assert out["artifacts"]["status"] == "uploading", "the result did not wait for the upload"
    # a user's machine with its own credentials (the test process has none) fetches them,
    # waiting for the upload that goes on in the background
    dest = tmp_path / "fetched"
    got = subprocess.run(
        [str(Path(sys.executable).with_name("celery-agent")), "artifacts", r.id, "--get", str(dest)],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, **s3.env()),
    )  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert (dest / "model.pt").read_bytes() == b"weights" * 3000
    assert (dest / "plots" / "loss.txt").read_text() == "0.5 0.25\n"
    kept = store.get(r.id)["artifacts"]
    assert kept["status"] == "uploaded" and kept["url"] == f"{root}/runs/{r.id}", kept
    objects = read_tree(s3.fs(), f"{bucket}/team/artifacts/runs/{r.id}")
    assert sorted(objects) == ["manifest.json", "model.pt", "plots/loss.txt"]
    assert objects["model.pt"] == b"weights" * 3000
    manifest = json.loads(objects["manifest.json"])  # (the pull waited for the sha256 as well)
    assert manifest["hashes"] == kept["hashes"] == "complete", kept
    assert manifest["files"] == kept["files"] and {
        f["path"]: f["sha256"] for f in manifest["files"]
    } == {
        "model.pt": hashlib.sha256(b"weights" * 3000).hexdigest(),
        "plots/loss.txt": hashlib.sha256(b"0.5 0.25\n").hexdigest(),
    }
    lines = store.read_log(r.id)[1]
    assert "secret-looking vars the run sees: []" in lines, "the run gets no credentials"
    assert any(line.startswith("[celery-agent] artifacts: 2 file(s)") for line in lines), lines
    # a run whose upload still goes on when its worker is told to stop: the worker waits for it
    assert w.proc is not None
    with s3.stalled():  # (the store hangs: the upload is surely still going at the stop)
        big = submit_task.delay(TaskSpec(repo=str(repo), entry="big.py", queue=w.queues,
                                         executor="local")).get(timeout=120)  # fmt: skip
        assert big["status"] == "succeeded" and big["artifacts"]["status"] == "uploading", big
        w.proc.terminate()  # a warm shutdown while the upload goes on
        wait_for(
            "the stopping worker to wait for the upload",
            lambda: "upload(s) of outputs" in w.output(),
            60,
            detail=lambda: w.output()[-3000:],
        )
    w.proc.wait(120)
    assert store.get(big["run_id"])["artifacts"]["status"] == "uploaded"
    assert sorted(
        Path(p).name for p in s3.fs().find(f"{bucket}/team/artifacts/runs/{big['run_id']}")
    ) == ["manifest.json", *(f"shard-{i}.bin" for i in range(4))]
    held = everything_in(store.r)
    assert r.id in held and f"celery-task-meta-{r.id}" in set(
        store.r.scan_iter("celery-task-meta-*")
    )
    for secret in (s3.key, s3.secret):
        assert secret not in held, "a credential reached Redis"
        assert secret not in w.output(), "a credential reached the worker's log"
        assert secret not in json.dumps(out) + "\n".join(lines)


def test_a_missing_bucket_is_reported_on_the_run_in_status_and_nothing_is_lost(
    s3, make_worker, make_repo, store, capsys
):
    root = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x"
    w = make_worker(f"s3-{uuid.uuid4().hex[:6]}", CELERY_AGENT_ARTIFACT_ROOT=root, **s3.env())
    repo = make_repo({"job.py": JOB})
    first = submit_task.delay(spec(repo, w.queues)).get(timeout=120)
    assert first["status"] == "succeeded", "the store's failure does not change the outcome"
    kept = get_run(first["run_id"]).settled(60)["artifacts"]
    assert kept["status"] == "failed", kept
    assert "does not exist" in kept["error"] and "artifact_root" in kept["error"], kept
    assert "create it" in kept["error"]
    run_id = first["run_id"]
    assert any(line.startswith("[celery-agent] artifacts: failed (bucket ")
               for line in store.read_log(run_id)[1])  # fmt: skip
    assert Path(store.get(run_id)["output_dir"], "model.pt").is_file(), "nothing lost locally"
    assert not s3.fs().exists(root.removeprefix("s3://").split("/")[0]), "no bucket was made"
    # the worker says so in its heartbeat, `celery-agent status` and its log, and stays healthy
    heartbeat = wait_for(
        "the store check in the heartbeat", lambda: _store_check(store, w.name), 60
    )
    assert heartbeat["ok"] is False and "does not exist" in heartbeat["error"], heartbeat
    assert "artifact store: runs' outputs cannot be kept" in w.output()
    capsys.readouterr()
    assert main(["status", "--json"]) == 0
    rows = {
        row["name"].split("@")[0]: row for row in json.loads(capsys.readouterr().out)["workers"]
    }
    assert rows[w.name]["artifact_store"]["error"] == heartbeat["error"]
    with pytest.warns(
        ArtifactStoreWarning, match=f"worker {w.name}@.* cannot keep outputs: bucket"
    ):
        second = submit(spec(repo, w.queues)).wait(timeout=120)  # submit says so at once
    assert second["state"] == "succeeded"
    assert get_run(second["run_id"]).settled(60)["artifacts"]["status"] == "failed"


def test_a_store_that_does_not_answer_fails_the_upload_not_the_run(
    s3, make_worker, make_repo, store
):
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    w = make_worker(f"s3-{uuid.uuid4().hex[:6]}", CELERY_AGENT_ARTIFACT_ROOT="s3://bucket/x",
                    AWS_MAX_ATTEMPTS="2", **s3.env(endpoint=nobody))  # fmt: skip
    out = submit_task.delay(spec(make_repo({"job.py": JOB}), w.queues)).get(timeout=180)
    assert out["status"] == "succeeded", out
    final = get_run(out["run_id"]).settled(120)["artifacts"]
    assert final["status"] == "failed" and "does not answer" in final["error"], final
    assert "artifact_root" in final["error"] and "endpoint" in final["error"]
    assert Path(store.get(out["run_id"])["output_dir"], "model.pt").is_file()


def _store_check(store: Any, worker: str) -> dict[str, Any] | None:
    for name in store.r.scan_iter(f"{store.prefix}:worker:{worker}@*", _type="HASH"):
        raw = store.r.hget(name, "artifact_store")
        if raw:
            return dict(json.loads(raw))
    return None


def test_no_permission_to_write_is_reported_naming_the_setting(
    s3_with_iam, make_worker, make_repo, store
):
    bucket = f"ro-{uuid.uuid4().hex[:8]}"
    env = read_only(s3_with_iam, bucket)  # a user who may read the bucket, not write it
    w = make_worker(f"s3-{uuid.uuid4().hex[:6]}", CELERY_AGENT_ARTIFACT_ROOT=f"s3://{bucket}/x",
                    **env)  # fmt: skip
    out = submit_task.delay(spec(make_repo({"job.py": JOB}), w.queues)).get(timeout=120)
    assert out["status"] == "succeeded", out
    kept = get_run(out["run_id"]).settled(60)["artifacts"]
    assert kept["status"] == "failed" and "no permission to write" in kept["error"], kept
    assert "artifact_root" in kept["error"] and "write access" in kept["error"]
    assert Path(store.get(out["run_id"])["output_dir"], "model.pt").is_file()
    check = wait_for("the store check in the heartbeat", lambda: _store_check(store, w.name), 60)
    assert check["ok"] is False and "no permission to write" in check["error"], check


def test_an_upload_cut_short_by_a_killed_worker_is_recorded_failed_by_the_sweep(
    s3, make_worker, make_repo, store
):
    from celery_agent.sweep import sweep
    from celery_agent.workers import WorkerRegistry

    bucket = s3.bucket(f"b{uuid.uuid4().hex[:10]}")
    w = make_worker(f"s3-{uuid.uuid4().hex[:6]}", CELERY_AGENT_ARTIFACT_ROOT=f"s3://{bucket}/a",
                    CELERY_AGENT_ARTIFACT_WAIT="0", CELERY_AGENT_CLAIM_TTL="2",
                    **s3.env())  # fmt: skip
    spec_big = TaskSpec(repo=str(make_repo({"big.py": BIG})), entry="big.py", queue=w.queues,
                        executor="local")  # fmt: skip
    out = submit_task.delay(spec_big).get(timeout=120)
    assert out["status"] == "succeeded" and out["artifacts"]["status"] == "uploading", out
    assert w.proc is not None
    os.killpg(w.proc.pid, signal.SIGKILL)  # the worker and its pool die mid-upload
    w.proc.wait(30)
    registry = WorkerRegistry(store.r, store.keys)

    def swept() -> dict[str, Any] | None:
        store.r.delete(store.keys.sweep_lock())
        sweep(store, registry, lock_ttl=0.001, retention_days=0)
        kept = store.get(out["run_id"])["artifacts"]
        return kept if kept["status"] != "uploading" else None

    kept = wait_for("a sweep to end the upload", swept, 60, every=0.5)
    assert kept["status"] == "failed" and "stopped with the worker process" in kept["error"], kept
    assert store.get(out["run_id"])["output_dir"] in kept["error"], "it says where the files are"
