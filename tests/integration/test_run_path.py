"""The core run path end to end: a real worker process, real Redis, real git, real installs."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import git, write_wheel

from celery_agent import TaskSpec, get_run, submit, submit_task
from celery_agent.errors import SpecError, StateError
from celery_agent.serving import NoWorkerWarning
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration

TRAIN = """\
import argparse, os, sys
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--epochs", type=int, default=1)
a = p.parse_args()
import cademo
print("lr", a.lr, "epochs", a.epochs, "cademo", cademo.VERSION)
print("params-env", os.environ["CELERY_AGENT_PARAMS"])
open(os.path.join(os.environ["CELERY_AGENT_OUTPUT_DIR"], "out.txt"), "w").write("done")
print("oops", file=sys.stderr)
"""


def spec_for(repo: Path, worker, wheels: Path | None = None, **kw) -> TaskSpec:
    fields = {"repo": str(repo), "entry": "train.py", "queue": worker.queues}
    if wheels is not None:
        fields |= {"requirements": ["cademo"], "find_links": [str(wheels)], "no_index": True}
    return TaskSpec.parse(fields | kw)


def test_run_succeeds_with_params_requirements_and_output(worker, make_repo, wheelhouse, store):
    repo = make_repo({"train.py": TRAIN})
    spec = spec_for(repo, worker, wheelhouse, params={"lr": 0.5}, args=["--epochs", "3"])
    r = submit_task.delay(spec)
    out = r.get(timeout=180)
    assert out["status"] == "succeeded", out
    assert out["run_id"] == r.id and out["exit_code"] == 0
    assert out["params"] == {"lr": 0.5, "epochs": 3}
    assert any("lr 0.5 epochs 3 cademo 1.0" in line for line in out["log_tail"])
    assert "oops" in out["log_tail"], "stderr is captured too"
    record = store.get(r.id)
    assert record["state"] == "succeeded" and record["commit"] == git(repo, "rev-parse", "HEAD")
    assert "cademo==1.0" in record["freeze"]
    assert Path(record["output_dir"], "out.txt").read_text() == "done"
    assert record["queued_at"] if "queued_at" in record else record["submitted_at"]
    for stamp in ("submitted_at", "preparing_at", "running_at", "succeeded_at"):
        assert record[stamp] > 0, stamp
    _, lines = store.read_log(r.id)
    assert lines[0].startswith("[celery-agent] run ")
    assert any(line.startswith("lr 0.5") for line in lines)


def test_second_run_reuses_the_cached_env(worker, make_repo, wheelhouse, store):
    repo = make_repo({"train.py": TRAIN})
    first = submit_task.delay(spec_for(repo, worker, wheelhouse)).get(timeout=180)
    second = submit_task.delay(spec_for(repo, worker, wheelhouse)).get(timeout=180)
    assert first["status"] == second["status"] == "succeeded"
    assert store.get(second["run_id"])["env_hit"] == "1"
    assert second["timings"]["env"] < 1.0


def test_diff_with_new_file_is_applied(worker, make_repo):
    repo = make_repo({"train.py": "print('committed')\n"})
    (repo / "train.py").write_text("import helper\nprint('edited', helper.X)\n")
    (repo / "helper.py").write_text("X = 42\n")
    git(repo, "add", "-N", "helper.py")
    diff = git(repo, "diff", "HEAD") + "\n"
    out = submit_task.delay(spec_for(repo, worker, diff=diff, executor="local")).get(timeout=120)
    assert out["status"] == "succeeded", out
    assert "edited 42" in out["log_tail"]


def test_failed_run_returns_its_outcome_instead_of_raising(worker, make_repo):
    repo = make_repo({"train.py": "import sys\nprint('bad things')\nsys.exit(3)\n"})
    out = submit_task.delay(spec_for(repo, worker, executor="local")).get(timeout=120)
    assert out["status"] == "failed" and out["exit_code"] == 3
    assert "exited with code 3" in out["error"] and "bad things" in out["error"]


@pytest.mark.parametrize(
    ("files", "fields", "words"),
    [
        ({"train.py": "x"}, {"commit": "deadbeef" * 5}, "not found"),
        ({"train.py": "x"}, {"entry": "missing.py"}, "entry 'missing.py' does not exist"),
        ({"train.py": "a\n"}, {"diff": "--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-zzz\n+b\n"}, "train.py"),
        ({"train.py": "x"}, {"repo": "/nonexistent/repo"}, "/nonexistent/repo"),
        ({"train.py": "x"}, {"requirements": ["no-such-package-xyz-123"], "find_links": ["{wheels}"], "no_index": True,
                             "executor": "venv"}, "no-such-package-xyz-123"),
    ],
)  # fmt: skip
def test_bad_runs_end_failed_with_a_clear_error(
    worker, make_repo, wheelhouse, files, fields, words
):
    repo = make_repo(files)
    fields = {k: ([str(wheelhouse)] if v == ["{wheels}"] else v) for k, v in fields.items()}
    repo = fields.pop("repo", repo)
    out = submit_task.delay(spec_for(repo, worker, **({"executor": "local"} | fields))).get(
        timeout=180
    )
    assert out["status"] == "failed", out
    assert words in out["error"], out["error"]


def test_invalid_spec_raises_at_submit_and_records_nothing(redis_url, store):
    before = store.r.zcard(store.keys.runs())
    with pytest.raises(SpecError, match="entry"):
        submit_task.delay({"repo": "/r", "entry": "../escape.py"})
    with pytest.raises(SpecError, match="executor"):
        submit({"repo": "/r", "entry": "t.py", "executor": "nope"})
    assert store.r.zcard(store.keys.runs()) == before


def test_submit_with_redis_down_fails_fast_with_the_url(redis_url, monkeypatch):
    from celery_agent.app import use_environment
    from celery_agent.embedded import free_port

    monkeypatch.setenv("CELERY_AGENT_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    use_environment()
    try:
        t0 = time.monotonic()
        with pytest.raises(StateError, match="Redis is unreachable at redis://127.0.0.1"):
            submit({"repo": "/r", "entry": "t.py"})
        assert time.monotonic() - t0 < 10
    finally:
        monkeypatch.setenv("CELERY_AGENT_REDIS_URL", redis_url)
        use_environment()


SLEEPER = """\
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(os.path.join(os.environ["CELERY_AGENT_OUTPUT_DIR"], "pids"), "w").write(f"{os.getpid()} {child.pid}")
print("started", flush=True)
time.sleep(600)
"""


def _pids(store, run_id: str, timeout: float = 60) -> list[int]:
    def written() -> list[int]:
        path = Path(store.get(run_id).get("output_dir") or "/nonexistent", "pids")
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    return wait_for(
        f"run {run_id} to write its pids",
        written,
        timeout,
        every=0.1,
        detail=lambda: store.get(run_id),
    )


def test_cancel_running_run_kills_the_whole_tree(worker, make_repo, store):
    repo = make_repo({"train.py": SLEEPER})
    run = submit(spec_for(repo, worker, executor="local", grace=0))
    pids = _pids(store, run.id)
    # the running state goes out with the first output batch
    wait_for("the run running", lambda: store.get(run.id)["state"] == "running", 5, every=0.01)
    t0 = time.monotonic()
    assert run.cancel() == "running"
    out = run.result.get(timeout=30)
    assert out["status"] == "aborted" and time.monotonic() - t0 < 5
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


def test_timeout_ends_timed_out_and_kills_the_tree(worker, make_repo, store):
    repo = make_repo({"train.py": SLEEPER})
    run = submit(spec_for(repo, worker, executor="local", timeout=3, grace=0))
    pids = _pids(store, run.id)
    out = run.result.get(timeout=60)
    assert out["status"] == "timed_out" and "timed out" in out["error"]
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


def test_cancel_of_a_queued_run_means_it_never_starts(make_repo, make_worker, store):
    queue = f"later-{uuid.uuid4().hex[:6]}"
    repo = make_repo({"train.py": "open('ran', 'w')\n"})
    with pytest.warns(NoWorkerWarning, match=f"no online worker serves queue '{queue}'"):
        run = submit({"repo": str(repo), "entry": "train.py", "queue": queue, "executor": "local"})
    assert run.state == "queued"
    assert run.cancel() == "queued" and run.state == "aborted"
    make_worker(queue)
    out = run.result.get(timeout=60)
    assert out["status"] == "aborted"
    assert not (repo / "ran").exists() and "preparing_at" not in store.get(run.id)


def test_handle_waits_and_reads_logs(worker, make_repo):
    repo = make_repo({"train.py": "for i in range(5000): print('line', i)\n"})
    run = submit(spec_for(repo, worker, executor="local"))
    assert run.wait(timeout=120)["state"] == "succeeded"
    lines = [x for x in run.logs() if x.startswith("line ")]
    assert lines == [f"line {i}" for i in range(5000)]
    assert get_run(run.id[:12]).id == run.id


def test_requirements_txt_in_repo_is_used_when_spec_has_none(worker, make_repo, tmp_path, store):
    wheels = tmp_path / "wh2"
    write_wheel(wheels, "cademo", "1.0", "VERSION = 'txt'\n")
    repo = make_repo(
        {"train.py": "import cademo; print('v', cademo.VERSION)\n", "requirements.txt": "cademo\n"}
    )
    out = submit_task.delay(spec_for(repo, worker, find_links=[str(wheels)], no_index=True)).get(
        timeout=180
    )
    assert out["status"] == "succeeded", out
    assert "v txt" in out["log_tail"]
