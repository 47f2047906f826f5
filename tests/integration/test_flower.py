"""Flower with the hardware page: a real Flower process, a live worker, a headless Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from flower_support import wait_state

from celery_agent import TaskSpec, submit, submit_task
from celery_agent.dispatch import args_repr, display_name
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars"]  # fmt: skip


def _get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return bytes(resp.read())


def chromium(tmp_path: Path, *args: str, timeout: float = 60) -> str:
    """Run headless Chromium once (own profile, own process group); returns its stdout."""
    assert CHROMIUM, "chromium is not installed"
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    argv = [CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}", *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # zygote and renderer processes, if any are left
        proc.wait()
    return out.decode(errors="replace")


def test_hardware_api_lists_the_live_worker_with_its_history(flower_url, worker):
    def listed() -> dict | None:
        data = json.loads(_get(flower_url + "/celery-agent/api/hardware"))
        rows = {w["name"]: w for w in data["workers"]}
        row = rows.get(f"{worker.name}@{os.uname().nodename}") or next(
            (w for n, w in rows.items() if n.startswith(worker.name + "@")), None
        )
        return row if row and len(row["history"]) >= 2 else None

    row = wait_for("the worker listed with two heartbeats", listed, 20, every=0.5)
    assert row["state"] == "online"
    assert worker.queues in row["queues"]
    assert len(row["history"]) >= 2 and row["history"][-1]["cpu"] is not None


def test_hardware_api_shows_each_quota_against_what_it_holds(flower_url, store):
    from celery_agent.quotas import Quotas

    who = f"mia-{uuid.uuid4().hex[:6]}"
    Quotas(store).set(f"user:{who}", runs=3)
    try:
        data = json.loads(_get(flower_url + "/celery-agent/api/hardware"))
        (row,) = [q for q in data["quotas"] if q.get("user") == who]
        assert row["limits"] == {"runs": 3} and row["runs"] == 0 and isinstance(data["users"], list)
    finally:
        Quotas(store).remove(f"user:{who}")


def test_flower_metrics_carry_the_fleet_metrics(flower_url, worker):
    from prometheus_client.parser import text_string_to_metric_families

    def served() -> tuple[str, dict] | None:  # the session worker, online for its queue
        text = _get(flower_url + "/metrics").decode()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip
        workers = samples.get(("celery_agent_queue_workers", (("queue", worker.queues),)))
        return (text, samples) if workers == 1 else None

    text, samples = wait_for("one worker counted on the queue", served, 20, every=0.5)
    assert samples.get(("celery_agent_up", ())) == 1
    assert "# HELP flower_events_total" in text  # Flower's own metrics are still served


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_hardware_page_renders_the_worker_and_its_run_in_chromium(
    flower_url, make_worker, make_repo, tmp_path
):
    worker = make_worker(f"fl-{uuid.uuid4().hex[:6]}", concurrency=1)
    repo = make_repo({"nap.py": "import time\nprint('napping', flush=True)\ntime.sleep(60)\n"})
    spec = TaskSpec(repo=str(repo), entry="nap.py", executor="local", queue=worker.queues,
                    name="long-nap")  # fmt: skip
    run = submit(spec)
    try:
        wait_state(run, "running")
        _wait_listed(flower_url, run.id)  # the next heartbeat carries it
        page = flower_url + "/celery-agent/hardware"
        dom = chromium(tmp_path, "--dump-dom", page)
        _screenshot(tmp_path, page)
    finally:
        run.cancel()
        run.wait(30)
    assert worker.name in dom and "long-nap" in dom and run.id[:12] in dom
    assert "<svg" in dom or "waiting for heartbeats" in dom


def _screenshot(tmp_path: Path, page: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "flower-hardware.png"
    shot.unlink(missing_ok=True)
    chromium(tmp_path, "--window-size=1280,900", f"--screenshot={shot}", page)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000


def _wait_listed(url: str, run_id: str, timeout: float = 20) -> None:
    def listed() -> bool:
        data = json.loads(_get(url + "/celery-agent/api/hardware"))
        return any(r["id"] == run_id for w in data["workers"] for r in w["current"])

    wait_for(f"run {run_id} on the hardware page", listed, timeout, every=0.5)


def test_flower_lists_a_run_by_its_display_name_without_secrets(flower_url, make_worker, make_repo):
    worker = make_worker(f"fl-{uuid.uuid4().hex[:6]}", concurrency=1)
    repo = make_repo({"hello.py": "print('hello from a run')\n"})
    spec = TaskSpec(repo=str(repo), entry="hello.py", executor="local", queue=worker.queues,
                    name="greeting", env={"API_TOKEN": "tok-s3cret"}, params={"n": 3})  # fmt: skip
    result = submit_task.apply_async([spec], shadow=display_name(spec), argsrepr=args_repr(spec))
    assert result.get(timeout=60)["status"] == "succeeded"
    task = _flower_task(flower_url, result.id)
    assert task["name"] == f"run: greeting [{worker.queues}]"
    assert "hello.py" in task["args"] and "'n': 3" in task["args"]
    assert "tok-s3cret" not in json.dumps(task)


def _flower_task(url: str, task_id: str) -> dict[str, object]:
    def succeeded() -> dict[str, object] | None:
        task = json.loads(_get(url + "/api/tasks")).get(task_id)
        return dict(task) if task and task.get("state") == "SUCCESS" else None

    return wait_for(f"Flower to see task {task_id} succeed", succeeded, 30, every=0.5)
