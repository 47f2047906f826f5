"""RabbitMQ as the broker (state and results stay in Redis): the run path with re-queue priorities,
cancel, a killed worker and a drained one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_reliability_recovery import SCRIPT, pids, spec

from celery_agent import submit_task
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker(amqp_url: str, redis_url: str) -> Iterator[str]:
    """This process sends through RabbitMQ for the module's tests; Redis again after them."""
    from celery_agent.app import use_environment

    os.environ["CELERY_BROKER_URL"] = amqp_url
    use_environment()
    yield amqp_url
    del os.environ["CELERY_BROKER_URL"]
    use_environment()


def queue_name(tag: str) -> str:
    return f"rmq-{tag}-{uuid.uuid4().hex[:8]}"


def test_runs_go_through_rabbitmq_and_a_requeued_one_goes_first(
    broker, make_worker, make_repo, tmp_path, store
):
    """Classic queues are declared with x-max-priority: the re-queue priority beats new runs."""
    from celery_agent.app import app
    from celery_agent.requeue import celery_resend

    queue = queue_name("order")
    starts = tmp_path / "starts.txt"
    code = (
        f"import os\nopen({str(starts)!r}, 'a').write(os.environ['CELERY_AGENT_RUN_ID'] + '\\n')\n"
    )
    fields = {"repo": str(make_repo({"job.py": code})), "entry": "job.py", "queue": queue,
              "executor": "local"}  # fmt: skip
    backlog = [submit_task.delay(fields).id for _ in range(3)]
    again = str(uuid.uuid4())
    store.create_run(again, fields, queue)
    celery_resend(app)(again, fields, queue)  # sent last, as the sweep sends a requeued run
    w = make_worker(queue, concurrency=1, CELERY_BROKER_URL=broker)
    for run_id in [again, *backlog]:
        assert app.AsyncResult(run_id).get(timeout=60)["status"] == "succeeded"
    assert starts.read_text().split() == [again, *backlog]
    assert "amqp://" in w.output()


def test_cancel_on_rabbitmq(broker, make_worker, make_repo, tmp_path, store):
    queue = queue_name("cancel")
    make_worker(queue, concurrency=1, CELERY_BROKER_URL=broker)
    r = submit_task.delay(spec(make_repo({"job.py": SCRIPT}), queue, tmp_path, work=60, grace=0))
    wait_for("the run to start", lambda: pids(tmp_path), 30)
    store.request_abort(r.id)
    assert r.get(timeout=30)["status"] == "aborted"


def test_a_killed_workers_run_comes_back_on_rabbitmq(
    broker, make_worker, make_repo, tmp_path, store
):
    """RabbitMQ gives the dead worker's message back as its connection drops; the claim of the
    dead runner (on this machine) is taken over, or the sweep requeues the run."""
    queue = queue_name("kill")
    workers = [make_worker(queue, concurrency=1, CELERY_BROKER_URL=broker) for _ in range(2)]
    r = submit_task.delay(spec(make_repo({"job.py": SCRIPT}), queue, tmp_path, work=3))
    wait_for("the run to start", lambda: pids(tmp_path), 30)
    name = store.get(r.id)["worker"]
    victim = next(w for w in workers if name == f"{w.name}@{socket.gethostname()}")
    os.killpg(victim.proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    victim.proc.wait()
    out = r.get(timeout=60)
    assert out["status"] == "succeeded", out
    assert time.monotonic() - killed_at < 20 + 3, "back and done within the recovery goal"
    record = store.get(r.id)
    assert record["attempt"] == 2 and record["lost_attempts"] == 1, record
    assert len(pids(tmp_path)) == 2


def test_a_drained_run_goes_back_through_rabbitmq(broker, make_worker, make_repo, tmp_path, store):
    queue = queue_name("drain")
    env = {"CELERY_BROKER_URL": broker}
    first = make_worker(queue, concurrency=1, CELERY_AGENT_DRAIN_GRACE="1", **env)
    r = submit_task.delay(spec(make_repo({"job.py": SCRIPT}), queue, tmp_path, work=3))
    wait_for("the run to start", lambda: pids(tmp_path), 30)
    first.proc.send_signal(signal.SIGTERM)
    first.proc.wait(15)
    record = store.get(r.id)
    assert record["state"] == "queued" and "drained" in record["last_error"], record
    make_worker(queue, concurrency=1, **env)
    assert r.get(timeout=60)["status"] == "succeeded"
    assert store.get(r.id)["attempt"] == 2


def test_quorum_queues_carry_runs(broker, make_worker, make_repo, tmp_path, monkeypatch):
    """amqp_queue_type = quorum: the run's queue is a quorum queue (declaring it classic fails)."""
    from amqp.exceptions import PreconditionFailed
    from kombu import Connection

    from celery_agent.app import use_environment

    # (a queue keeps the type it was declared with: this test's sweep queue is its own too)
    env = {"CELERY_AGENT_AMQP_QUEUE_TYPE": "quorum", "CELERY_AGENT_SWEEP_QUEUE": queue_name("sw")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    use_environment()
    try:
        queue = queue_name("quorum")
        make_worker(queue, concurrency=1, CELERY_BROKER_URL=broker, **env)
        r = submit_task.delay(spec(make_repo({"job.py": SCRIPT}), queue, tmp_path, work=0.2))
        assert r.get(timeout=60)["status"] == "succeeded"
        with Connection(broker) as conn, pytest.raises(PreconditionFailed, match="x-queue-type"):
            conn.default_channel.queue_declare(
                queue=queue, durable=True, auto_delete=False, arguments={"x-queue-type": "classic"}
            )
    finally:
        for name in env:
            monkeypatch.delenv(name)
        use_environment()


def test_celery_agent_up_takes_rabbitmq_as_its_broker(broker, make_repo, tmp_path):
    """`celery-agent up --broker amqp://...`: its own Redis for state, messages through RabbitMQ."""
    from conftest import _spawn

    from celery_agent.embedded import free_port

    port, home = free_port(), tmp_path / "up-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY")}
    env["CELERY_AGENT_SWEEP_QUEUE"] = queue_name("up-sweep")
    exe = str(Path(sys.executable).with_name("celery-agent"))
    argv = [exe, "up", "--port", str(port), "--home",
            str(home), "--broker", broker, "-Q", queue_name("up")]  # fmt: skip
    up = _spawn(argv, env, tmp_path / "up.log", tmp_path)
    try:
        log = tmp_path / "up.log"
        wait_for("the worker ready", lambda: b" ready." in log.read_bytes(), 60)
        assert b"set CELERY_BROKER_URL to it as well" in log.read_bytes()
        queue = argv[-1]
        repo = make_repo({"job.py": "print('through rabbitmq')\n"})
        client = env | {"CELERY_AGENT_REDIS_URL": f"redis://127.0.0.1:{port}/0",
                        "CELERY_BROKER_URL": broker}  # fmt: skip
        done = subprocess.run(
            [exe, "submit", "job.py", "--queue", queue,
             "--executor", "local", "--wait"],
            cwd=repo, env=client, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "through rabbitmq" in done.stdout
        assert "amqp://" in log.read_text()
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)


def test_the_quick_soak_on_rabbitmq_leaves_no_run_unfinished_or_started_twice(amqp_url):
    """``python -m benchmarks.soak --quick --broker amqp://...``: 18 runs through three workers
    that are killed every 2 s, the messages through RabbitMQ, two users, one with a quota; its
    exit status is 1 when a run never ended, two attempts of one ran at once or the quota was
    passed."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", "--quick", "--broker", amqp_url],
        cwd=root, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    numbers = dict(line.strip().split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert numbers["submitted"] == "18" and numbers["started_twice_at_once"] == "0", numbers
    assert numbers["unfinished"] == "0" and int(numbers["kills"]) > 0, numbers
    assert int(numbers["most_soak-a_at_once"]) <= int(numbers["quota"]), numbers


def test_the_exporter_reads_queue_depth_from_rabbitmq(broker, redis_url, make_repo, store):
    """A passive declare per queue: the runs waiting where no worker serves them, 0 for a queue
    the broker does not have; a broker that cannot be reached is broker_up 0, the rest served."""
    from kombu import Connection
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from celery_agent.embedded import free_port
    from celery_agent.exporter import fleet_collector

    def scrape(broker_url: str, *queues: str) -> dict[tuple[str, str], float]:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(fleet_collector(redis_url, broker_url, store.prefix, queues))
        text = generate_latest(registry).decode()
        return {(s.name, s.labels.get("queue", "")): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip

    queue, nowhere = queue_name("depth"), queue_name("none")
    fields = {"repo": str(make_repo({"job.py": "print(1)\n"})), "entry": "job.py",
              "queue": queue, "executor": "local"}  # fmt: skip
    for _ in range(3):
        submit_task.delay(fields)
    wait_for(
        "a queue depth of 3",
        lambda: scrape(broker, queue).get(("celery_agent_queue_depth", queue)) == 3,
        30,
        0.5,
    )
    got = scrape(broker, queue, nowhere)
    assert got[("celery_agent_broker_up", "")] == 1 and got[("celery_agent_up", "")] == 1
    assert got[("celery_agent_queue_depth", nowhere)] == 0
    assert got[("celery_agent_queue_depth", queue)] == 3
    dead = scrape(f"amqp://guest:guest@127.0.0.1:{free_port()}//", queue)
    assert dead[("celery_agent_up", "")] == 1 and dead[("celery_agent_broker_up", "")] == 0
    assert ("celery_agent_queue_depth", queue) not in dead
    with Connection(broker) as conn:  # the runs no worker will take go with their queue
        conn.default_channel.queue_delete(queue)
