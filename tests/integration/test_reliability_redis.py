"""A Redis restart in the middle of a run, and malformed messages sent to a real worker."""

from __future__ import annotations

import os
import textwrap
import time
import uuid

import pytest
from conftest import Worker
from test_reliability_recovery import FAST, SCRIPT, spec

from celery_agent import submit_task
from celery_agent.app import app, create_app
from celery_agent.embedded import EmbeddedRedis, free_port
from celery_agent.state import TERMINAL, RunStore
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration

COUNT = textwrap.dedent(
    """\
    import time
    for i in range(50):
        print("line", i, flush=True)
        time.sleep(0.1)
    """
)


def test_a_run_outlives_a_redis_restart_and_keeps_every_log_line(make_repo, tmp_path):
    server = EmbeddedRedis(tmp_path / "redis", port=free_port()).start()
    queue = f"rr-{os.getpid()}-{time.monotonic_ns()}"
    worker = Worker(tmp_path / "home", server.url, queue, concurrency=1, **FAST)
    try:
        worker.start()
        store = RunStore.from_url(server.url)
        repo = make_repo({"job.py": COUNT})
        run_id = str(uuid.uuid4())
        job = spec(repo, queue, tmp_path, work=0)
        store.create_run(run_id, job.to_json(), queue)
        sender = create_app({"CELERY_AGENT_REDIS_URL": server.url})
        sender.send_task("celery_agent.run", args=[job.to_json()], task_id=run_id, queue=queue)
        wait_for("line 5 in the log", lambda: "line 5" in store.read_log(run_id)[1], 30)
        server.stop()
        folder = tmp_path / "home" / "runs" / run_id  # lines keep coming while Redis is away
        wait_for("line 25 in the run's folder", lambda: any("line 25" in f.read_text(errors="replace")
                             for f in folder.rglob("*") if f.is_file()), 30)  # fmt: skip
        server = EmbeddedRedis(tmp_path / "redis", port=server.port).start()
        record = wait_for(
            "the run to end", lambda: (rec := store.get(run_id))["state"] in TERMINAL and rec, 60
        )
        assert record["state"] == "succeeded", record
        lines = [x for x in store.read_log(run_id)[1] if x.startswith("line ")]
        assert lines == [f"line {i}" for i in range(50)]
    finally:
        worker.stop()
        server.stop()


@pytest.mark.parametrize("payload", [None, 42, "nonsense", {"repo": 1}, ["a", "b"], {}])
def test_a_malformed_message_ends_its_run_failed(worker, store, payload):
    run_id = str(uuid.uuid4())
    store.create_run(run_id, {"entry": "x.py"}, worker.queues)
    app.send_task("celery_agent.run", args=[payload], task_id=run_id, queue=worker.queues)
    record = wait_for(
        "the run to end", lambda: (rec := store.get(run_id))["state"] in TERMINAL and rec, 30
    )
    assert record["state"] == "failed" and record["error"], record


def test_a_worker_keeps_serving_after_malformed_messages(worker, make_repo, tmp_path, store):
    for args in ([], [1, 2, 3], [{"__type__": "celery_agent.TaskSpec", "__value__": 7}]):
        run_id = str(uuid.uuid4())
        store.create_run(run_id, {"entry": "x.py"}, worker.queues)
        app.send_task("celery_agent.run", args=args, task_id=run_id, queue=worker.queues)
        record = wait_for(
            "the run to end",
            lambda rid=run_id: (r := store.get(rid))["state"] in TERMINAL and r,
            30,
        )
        assert record["state"] == "failed", (args, record)
    repo = make_repo({"job.py": SCRIPT})
    out = submit_task.delay(spec(repo, worker.queues, tmp_path, work=0)).get(timeout=60)
    assert out["status"] == "succeeded", out
