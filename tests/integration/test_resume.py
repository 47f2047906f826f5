"""Resume after loss: a real worker process runs a script that writes a checkpoint every step, the
worker is killed (SIGKILL, the whole process group: a dead machine) mid-run, and the re-queued
attempt on another worker process (its own home: another machine) starts from the checkpoint the
first one synced to a shared file:// store."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import uuid
from pathlib import Path

import pytest
from test_docker_executor import docker_client, docker_spec  # noqa: F401 (a fixture)
from test_reliability_recovery import FAST

from celery_agent import submit_task
from celery_agent.cli import main
from celery_agent.spec import TaskSpec
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration

STEPS = 20
#: one checkpoint file per step (written to a temporary name, then renamed), the last 8 kept
TRAIN = textwrap.dedent(
    f"""\
    import json, os, pathlib, time
    out = pathlib.Path(os.environ["CELERY_AGENT_OUTPUT_DIR"])
    ckpts = pathlib.Path(os.environ["CELERY_AGENT_CHECKPOINT_DIR"])
    ckpts.mkdir(parents=True, exist_ok=True)
    found = sorted(ckpts.glob("step-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    state = json.loads(found[-1].read_text()) if found else {{"step": 0, "total": 0}}
    start = state["step"]
    attempt, resumed = os.environ["CELERY_AGENT_ATTEMPT"], os.environ.get("CELERY_AGENT_RESUMED")
    print(f"attempt {{attempt}} resumed {{resumed}} from step {{start}}", flush=True)
    for step in range(start, {STEPS}):
        time.sleep(0.25)
        state = {{"step": step + 1, "total": state["total"] + step}}
        tmp = ckpts / f"step-{{step + 1}}.json.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, ckpts / f"step-{{step + 1}}.json")
        (ckpts / f"step-{{step - 7}}.json").unlink(missing_ok=True)
        print(f"step {{step + 1}}", flush=True)
    result = {{"attempt": attempt, "resumed": resumed, "started_from": start, **state}}
    (out / "result.json").write_text(json.dumps(result))
    """
)


def synced_step(root: Path, run_id: str) -> int:
    """The newest step whose checkpoint the store holds for the run (0: none)."""
    folder = root / "runs" / run_id / "checkpoints"
    steps = [int(p.stem.split("-")[1]) for p in folder.glob("step-*.json")]
    return max(steps, default=0)


def test_a_killed_workers_run_resumes_from_its_checkpoint_on_another_worker(
    make_worker, make_repo, store, tmp_path: Path, capsys
):
    root = tmp_path / "shared-store"
    queue = f"resume-{uuid.uuid4().hex[:8]}"
    env = FAST | {"CELERY_AGENT_ARTIFACT_ROOT": root.as_uri()}
    first = make_worker(queue, concurrency=1, **env)
    spec = TaskSpec(repo=str(make_repo({"train.py": TRAIN})), entry="train.py", queue=queue,
                    executor="local", checkpoint_sync=0.2)  # fmt: skip
    r = submit_task.delay(spec)
    wait_for("step 5 synced", lambda: synced_step(root, r.id) >= 5, 30)
    assert first.proc is not None
    os.killpg(first.proc.pid, signal.SIGKILL)  # the whole worker, pool included
    first.proc.wait()
    kept_at_kill = synced_step(root, r.id)
    make_worker(queue, concurrency=1, **env)
    out = r.get(timeout=60)
    assert out["status"] == "succeeded", out
    record = store.get(r.id)
    assert record["attempt"] == 2 and record["lost_attempts"] == 1
    assert record["resumed"]["from"] == r.id and record["resumed"]["attempt"] == 2
    result = json.loads((root / "runs" / r.id / "result.json").read_text())
    assert result["attempt"] == "2" and result["resumed"] == "1", result
    assert 0 < result["started_from"] <= kept_at_kill, (result, kept_at_kill)
    assert result["step"] == STEPS and result["total"] == sum(range(STEPS)), result
    lines = store.read_log(r.id)[1]
    assert "attempt 1 resumed None from step 0" in lines
    assert f"attempt 2 resumed 1 from step {result['started_from']}" in lines
    assert any(line.startswith("[celery-agent] checkpoints: restored ") for line in lines)
    assert any(line.startswith("[celery-agent] checkpoints: 8 file(s), ") for line in lines)
    steps_kept = sorted(synced_step(root, r.id) - n for n in range(8))
    assert sorted(p.name for p in (root / "runs" / r.id / "checkpoints").iterdir()) == sorted(
        f"step-{n}.json" for n in steps_kept
    ), "deleted checkpoints left the store; no hidden or temporary names are left"
    assert record["checkpoints"]["files"] == 8 and "error" not in record["checkpoints"]
    capsys.readouterr()
    assert main(["show", r.id]) == 0
    shown = capsys.readouterr().out
    assert f"from run {r.id} (attempt 2)" in shown and "checkpoints" in shown, shown


def test_a_drained_run_syncs_its_checkpoints_as_it_stops_and_resumes_from_them(
    make_worker, make_repo, store, tmp_path: Path
):
    root = tmp_path / "shared-store"
    queue = f"resume-drain-{uuid.uuid4().hex[:8]}"
    env = FAST | {"CELERY_AGENT_ARTIFACT_ROOT": root.as_uri()}
    first = make_worker(queue, concurrency=1, CELERY_AGENT_DRAIN_GRACE="1", **env)
    repo = make_repo({"train.py": TRAIN})  # (checkpoint_sync 0: no rounds, a sync at its stop)
    spec = TaskSpec(repo=str(repo), entry="train.py", queue=queue, executor="local",
                    checkpoint_sync=0)  # fmt: skip
    r = submit_task.delay(spec)
    wait_for("step 4 in the log", lambda: "step 4" in store.read_log(r.id)[1], 30)
    assert synced_step(root, r.id) == 0, "no periodic round"
    assert first.proc is not None
    first.proc.send_signal(signal.SIGTERM)
    first.proc.wait(15)
    record = store.get(r.id)
    assert record["state"] == "queued" and "drained" in record["last_error"], record
    stopped_at = synced_step(root, r.id)
    assert stopped_at >= 4 and record["checkpoints"]["files"] == min(stopped_at, 8), record
    make_worker(queue, concurrency=1, **env)
    out = r.get(timeout=60)
    assert out["status"] == "succeeded", out
    result = json.loads((root / "runs" / r.id / "result.json").read_text())
    assert result["started_from"] == stopped_at and result["attempt"] == "2", result
    assert result["total"] == sum(range(STEPS)), result


def test_rerun_resume_starts_a_new_run_from_the_checkpoints_of_another(
    make_worker, make_repo, store, tmp_path: Path, capsys
):
    root = tmp_path / "store"
    w = make_worker(f"rerun-{uuid.uuid4().hex[:8]}", CELERY_AGENT_ARTIFACT_ROOT=root.as_uri())
    short = TRAIN.replace(f"range(start, {STEPS})", "range(start, int(os.environ['UNTIL']))")
    spec = TaskSpec(repo=str(make_repo({"train.py": short})), entry="train.py", queue=w.queues,
                    executor="local", env={"UNTIL": "3"})  # fmt: skip
    first = submit_task.delay(spec)
    assert first.get(timeout=60)["status"] == "succeeded"
    capsys.readouterr()
    assert main(["rerun", first.id, "--resume", "--env", "UNTIL=5", "--wait"]) == 0
    second = [line for line in capsys.readouterr().err.splitlines() if "submitted run" in line]
    rerun_id = second[0].split()[2]
    result = json.loads((root / "runs" / rerun_id / "result.json").read_text())
    assert result == {"attempt": "1", "resumed": "1", "started_from": 3, "step": 5,
                      "total": sum(range(5))}  # fmt: skip
    assert store.get(rerun_id)["resumed"]["from"] == first.id
    assert synced_step(root, rerun_id) == 5, "the new run keeps checkpoints of its own"
    fresh = submit_task.delay(spec.with_changes(resume_from=rerun_id + "x"))
    out = fresh.get(timeout=60)
    assert out["status"] == "failed" and f"run {rerun_id}x kept no checkpoints" in out["error"]


#: one step per run, from the last checkpoint; says who it ran as
STEP = """\
import json, os, pathlib
ck = pathlib.Path(os.environ["CELERY_AGENT_CHECKPOINT_DIR"])
ck.mkdir(parents=True, exist_ok=True)
last = ck / "last.json"
step = json.loads(last.read_text())["step"] + 1 if last.exists() else 1
(ck / "last.json.tmp").write_text(json.dumps({"step": step}))
os.replace(ck / "last.json.tmp", last)
print("uid", os.getuid(), "resumed", os.environ.get("CELERY_AGENT_RESUMED"), "step", step)
"""


@pytest.mark.usefixtures("docker_client")
def test_a_non_root_container_resumes_in_the_checkpoint_folder_the_worker_restored(
    worker, make_repo, store
):
    repo = make_repo({"train.py": STEP})
    first = submit_task.delay(docker_spec(repo, worker, docker={"user": "1000:1000"}))
    assert first.get(timeout=180)["status"] == "succeeded"
    again = docker_spec(repo, worker, docker={"user": "1000:1000"}, resume_from=first.id)
    out = submit_task.delay(again).get(timeout=180)
    assert out["status"] == "succeeded", out
    assert "uid 1000 resumed 1 step 2" in store.read_log(out["run_id"])[1]


#: holds its GPU until the file FLAG appears (60 s at most)
HOLD = """\
import os, pathlib, time
flag, deadline = pathlib.Path(os.environ["FLAG"]), time.monotonic() + 60
while not flag.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
print("let go", flag.exists(), flush=True)
"""


def test_a_dynamic_worker_restores_the_checkpoints_before_it_leases_the_gpu(
    make_worker, make_repo, store, tmp_path: Path
):
    root = tmp_path / "store"
    w = make_worker(f"rgpu-{uuid.uuid4().hex[:8]}", concurrency=2, args=("--gpus", "0", "--dynamic"),
                    CELERY_AGENT_FAKE_GPUS="1", CELERY_AGENT_GPU_WAIT="60",
                    CELERY_AGENT_ARTIFACT_ROOT=root.as_uri())  # fmt: skip
    repo = make_repo({"step.py": STEP, "hold.py": HOLD})
    spec = TaskSpec(repo=str(repo), entry="step.py", queue=w.queues, executor="local")
    first = submit_task.delay(spec)
    assert first.get(timeout=60)["status"] == "succeeded"
    flag = tmp_path / "flag"
    holder = submit_task.delay(spec.with_changes(entry="hold.py", gpus=1, env={"FLAG": str(flag)}))
    # (it holds the one GPU)
    wait_for("the holder running", lambda: store.get(holder.id)["state"] == "running", 60)
    resumed = submit_task.delay(spec.with_changes(gpus=1, resume_from=first.id))
    restored = w.home / "runs" / resumed.id / "output" / "checkpoints" / "last.json"
    try:
        # restored while it waits for the GPU, not after
        wait_for("the checkpoint restored", restored.exists, 60)
        assert store.get(holder.id)["state"] == "running", "the GPU was still taken meanwhile"
    finally:
        flag.touch()
    assert holder.get(timeout=60)["status"] == "succeeded"
    out = resumed.get(timeout=60)
    assert out["status"] == "succeeded", out
    lines = store.read_log(resumed.id)[1]
    order = [i for key in ("checkpoints: restored", "GPUs (dynamic)", "step 2")
             for i, line in enumerate(lines) if key in line]  # fmt: skip
    assert len(order) == 3 and order == sorted(order), lines
