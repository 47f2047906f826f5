"""Secret env values (``secret_env``) with a real worker: the run gets them; Redis (run record, log
stream, result), the log file, Flower's argsrepr and `celery-agent show` never hold them."""

from __future__ import annotations

import hashlib
import json
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery.signals import before_task_publish

from celery_agent import runenv, submit_task
from celery_agent.app import app
from celery_agent.cli import main
from celery_agent.requeue import celery_resend
from celery_agent.spec import TaskSpec
from celery_agent.state import TERMINAL
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration

JOB = textwrap.dedent(
    """\
    import hashlib, os
    value = os.environ["API_KEY"]
    print("sha", hashlib.sha256(value.encode()).hexdigest(), flush=True)
    print("names", os.environ.get("CELERY_AGENT_SECRET_ENV"), flush=True)
    if os.environ.get("ECHO"):
        print("the key is", value, "and again", value, flush=True)
    """
)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def secret_spec(make_repo, queue: str, secret: str, **env: str) -> TaskSpec:
    repo = make_repo({"job.py": JOB})
    return TaskSpec(
        repo=str(repo), entry="job.py", queue=queue, executor="local",
        env={"API_KEY": secret, "PLAIN": "visible", **env}, secret_env=["API_KEY"],
    )  # fmt: skip


def redis_text(store) -> str:
    """Everything the test Redis holds, as text: every key and every value, whatever its type."""
    r, out = store.r, []
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        value: Any = {
            "string": lambda k: r.get(k),
            "hash": lambda k: r.hgetall(k),
            "list": lambda k: r.lrange(k, 0, -1),
            "set": lambda k: r.smembers(k),
            "zset": lambda k: r.zrange(k, 0, -1),
            "stream": lambda k: r.xrange(k),
        }.get(kind, lambda k: None)(key)
        out.append(f"{key} {value!r}")
    return "\n".join(out)


@pytest.fixture()
def published() -> list[dict[str, Any]]:
    """The headers of every task message this process publishes (argsrepr, kwargsrepr...)."""
    seen: list[dict[str, Any]] = []

    def keep(headers: dict[str, Any] | None = None, **_: Any) -> None:
        seen.append(dict(headers or {}))

    before_task_publish.connect(keep, weak=False)
    yield seen
    before_task_publish.disconnect(keep)


def test_a_secret_reaches_the_run_and_no_record_log_or_view(
    worker, make_repo, store, published, capsys
):
    secret = f"s3cret-{uuid.uuid4().hex}"
    r = submit_task.delay(secret_spec(make_repo, worker.queues, secret))
    raw_record = store.r.hgetall(store.keys.run(r.id))
    assert secret not in json.dumps(raw_record), "the queued record is masked from the start"
    out = r.get(timeout=60)
    assert out["status"] == "succeeded", out
    lines = store.read_log(r.id)[1]
    assert f"sha {sha(secret)}" in lines, "the run got the real value"
    assert "names API_KEY" in lines
    record = store.get(r.id)
    assert record["spec"]["env"] == {"API_KEY": "***", "PLAIN": "visible"}
    assert secret not in redis_text(store), "no key in Redis holds the value once the run ended"
    assert secret not in Path(record["run_dir"], "log.txt").read_text()
    assert secret not in json.dumps(out)
    headers = next(h for h in published if h.get("id") == r.id)
    assert secret not in str(headers.get("argsrepr")) + str(headers.get("kwargsrepr"))
    assert "job.py" in headers["argsrepr"]
    extended = app.AsyncResult(r.id)  # the arguments Celery keeps with the result
    assert extended.args and extended.args[0]["env"]["API_KEY"] == "***"
    capsys.readouterr()
    assert main(["show", r.id, "--json"]) == 0 and main(["ls", "-n", "50"]) == 0
    shown = capsys.readouterr().out
    assert secret not in shown and '"API_KEY": "***"' in shown


def test_a_secret_the_run_prints_is_masked_in_its_log_and_record(worker, make_repo, store):
    secret = f"s3cret-{uuid.uuid4().hex}"
    r = submit_task.delay(secret_spec(make_repo, worker.queues, secret, ECHO="1"))
    out = r.get(timeout=60)
    assert out["status"] == "succeeded", out
    lines = store.read_log(r.id)[1]
    assert "the key is *** and again ***" in lines
    assert f"sha {sha(secret)}" in lines
    assert secret not in json.dumps(store.r.hgetall(store.keys.run(r.id)))
    assert secret not in json.dumps(out) and "the key is *** and again ***" in out["log_tail"]
    assert secret not in str(store.r.xrange(store.keys.log(r.id)))


def test_a_secret_the_run_prints_never_reaches_its_log_file(worker, make_repo, store):
    secret = f"s3cret-{uuid.uuid4().hex}"
    r = submit_task.delay(secret_spec(make_repo, worker.queues, secret, ECHO="1"))
    assert r.get(timeout=60)["status"] == "succeeded"
    text = Path(store.get(r.id)["run_dir"], "log.txt").read_text()
    assert "the key is ***" in text and secret not in text


def test_a_run_sent_again_from_its_masked_record_gets_its_secret_back(worker, make_repo, store):
    """What the sweep and a drain do: send the run again from its record, values masked."""
    secret = f"s3cret-{uuid.uuid4().hex}"
    spec = secret_spec(make_repo, worker.queues, secret)
    run_id = str(uuid.uuid4())
    store.create_run(run_id, spec.to_json(), worker.queues)
    runenv.stash(store, run_id, spec)
    assert secret not in json.dumps(spec.to_json())
    celery_resend(app)(run_id, store.get(run_id)["spec"], worker.queues)
    out = app.AsyncResult(run_id).get(timeout=60)
    assert out["status"] == "succeeded", out
    assert f"sha {sha(secret)}" in store.read_log(run_id)[1]
    # (the result goes out with the run's end write; the task drops the kept values just after)
    assert wait_for(
        "the secrets dropped", lambda: not store.r.exists(store.keys.secrets(run_id)), 10
    )
    assert secret not in redis_text(store)


def test_a_run_sent_again_without_its_kept_secret_fails_naming_it(worker, make_repo, store):
    spec = secret_spec(make_repo, worker.queues, "never-kept")
    run_id = str(uuid.uuid4())
    store.create_run(run_id, spec.to_json(), worker.queues)
    celery_resend(app)(run_id, store.get(run_id)["spec"], worker.queues)
    record = wait_for(
        "the run to end", lambda: (rec := store.get(run_id))["state"] in TERMINAL and rec, 60
    )
    assert record["state"] == "failed"
    assert "API_KEY" in record["error"] and "--env" in record["error"], record["error"]
    assert not any(line.startswith("sha ") for line in store.read_log(run_id)[1])


def test_kept_secrets_restore_masked_values_and_repo_credentials(store):
    url = "https://bot:tok-SECRET@example.com/org/repo.git"
    spec = TaskSpec(repo=url, entry="t.py", env={"K": "v1", "P": "p"}, secret_env=["K"])
    stored = TaskSpec.parse(spec.to_json())
    assert stored.repo == "https://example.com/org/repo.git" and stored.env["K"] == "***"
    run_id = str(uuid.uuid4())
    runenv.stash(store, run_id, spec)
    again = runenv.with_secrets(store, run_id, stored)
    assert again.repo == url and again.env["K"] == "v1" and again.env["P"] == "p"
    assert again.env[runenv.SECRET_NAMES_ENV] == "K"
    assert runenv.secret_values(again.env) == ["v1"]
    runenv.forget(store, run_id)
    with pytest.raises(Exception, match="K are no longer kept|K is no longer kept|no longer kept"):
        runenv.with_secrets(store, run_id, stored)
