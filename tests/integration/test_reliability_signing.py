"""Message signing (``task_serializer = "auth"``): a signing worker runs signed runs and refuses
unsigned messages, with a real key and certificate, a real worker and a real client process."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from celery_agent.app import app
from celery_agent.spec import TaskSpec
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration

#: writes a marker file, so a run that started leaves a trace even if its record said otherwise
JOB = 'import os, pathlib\npathlib.Path(os.environ["MARK"]).write_text("ran")\nprint("signed ok")\n'
REFUSED = "Refusing to deserialize untrusted content"


def write_key_and_cert(folder: Path) -> tuple[Path, Path]:
    """A new RSA key and a self-signed certificate for it, as PEM files in ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "celery-agent test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = folder / "worker.key", folder / "certs" / "worker.pem"
    cert_path.parent.mkdir(parents=True)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def signing_env(folder: Path) -> dict[str, str]:
    """Environment of a signing process: a config module in ``folder`` with a fresh key and
    certificate that trusts only that certificate."""
    folder.mkdir()
    key, cert = write_key_and_cert(folder)
    (folder / "signing_config.py").write_text(
        textwrap.dedent(
            f"""\
            security_key = {str(key)!r}
            security_certificate = {str(cert)!r}
            security_cert_store = {str(cert.parent / "*.pem")!r}
            task_serializer = "auth"
            accept_content = ["auth"]
            """
        )
    )
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    return {"CELERY_AGENT_CONFIG": "signing_config", "PYTHONPATH": path}


@pytest.fixture()
def signing(tmp_path: Path) -> dict[str, str]:
    """Environment of a signing worker and of the clients that share its key."""
    pytest.importorskip("cryptography", reason="message signing needs celery-agent[auth]")
    return signing_env(tmp_path / "signing")


def job_spec(make_repo, queue: str, mark: Path) -> TaskSpec:
    repo = make_repo({"job.py": JOB})
    fields = {"repo": str(repo), "entry": "job.py", "queue": queue, "executor": "local"}
    return TaskSpec.parse(fields | {"env": {"MARK": str(mark)}})


def submit_signed(spec: TaskSpec, env: dict[str, str], wait: bool = True) -> dict[str, object]:
    """Submit ``spec`` from a separate client process with the signing config ``env``; the run's
    outcome (``wait``), else its id."""
    client = (
        "import json, sys\n"
        "from celery_agent import submit_task\n"
        "from celery_agent.app import app\n"
        "r = submit_task.delay(json.loads(sys.argv[1]))\n"
        "assert app.conf.task_serializer == 'auth'\n"
        "print(json.dumps(r.get(timeout=60) if sys.argv[2] == 'wait' else {'id': r.id}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", client, json.dumps(spec.to_json()), "wait" if wait else "send"],
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def in_broker(store, queue: str, task_id: str) -> bool:
    """Whether Redis still holds the message: on the queue (any priority) or taken and unacked."""
    r = store.r
    waiting = sum(r.llen(k) for k in r.scan_iter(f"{queue}*") if r.type(k) == "list")
    unacked = any(task_id in str(v) for v in r.hvals("unacked"))
    return bool(waiting or unacked)


def test_a_signed_run_succeeds_on_a_signing_worker(make_worker, make_repo, tmp_path, signing):
    queue = f"signed-{uuid.uuid4().hex[:8]}"
    w = make_worker(queue, concurrency=1, **signing)
    mark = tmp_path / "ran.txt"
    out = submit_signed(job_spec(make_repo, queue, mark), signing)
    assert out["status"] == "succeeded", out
    assert mark.read_text() == "ran"
    assert REFUSED not in w.output()


def test_an_unsigned_message_is_refused_by_a_signing_worker(
    make_worker, make_repo, tmp_path, store, signing
):
    queue = f"unsigned-{uuid.uuid4().hex[:8]}"
    w = make_worker(queue, concurrency=1, **signing)
    mark = tmp_path / "ran.txt"
    spec = job_spec(make_repo, queue, mark)
    run_id = str(uuid.uuid4())
    store.create_run(run_id, spec.to_json(), queue)
    assert app.conf.task_serializer == "json"  # this test process signs nothing
    app.send_task("celery_agent.run", args=[spec.to_json()], task_id=run_id, queue=queue)
    wait_for("the refusal in the worker log", lambda: REFUSED in w.output(), 30)
    assert "Received invalid task message" in w.output()
    assert "application/json" in w.output()
    # discarded: none can start it
    wait_for("the message gone from the broker", lambda: not in_broker(store, queue, run_id), 30)
    assert store.get(run_id)["state"] == "queued"
    assert not mark.exists(), "the unsigned run must never start"
    # the worker is still fine: a signed run on the same queue goes through
    out = submit_signed(spec, signing)
    assert out["status"] == "succeeded", out
    assert mark.exists()


def test_a_message_signed_with_an_unknown_key_is_refused(
    make_worker, make_repo, tmp_path, store, signing
):
    queue = f"forged-{uuid.uuid4().hex[:8]}"
    w = make_worker(queue, concurrency=1, **signing)
    stranger = signing_env(tmp_path / "stranger")  # its own key; the worker does not trust it
    mark = tmp_path / "ran.txt"
    sent = submit_signed(job_spec(make_repo, queue, mark), stranger, wait=False)
    wait_for(
        "the decode error in the worker log", lambda: "Can't decode message body" in w.output(), 30
    )
    wait_for(
        "the message gone from the broker", lambda: not in_broker(store, queue, str(sent["id"])), 30
    )
    assert store.get(str(sent["id"]))["state"] == "queued"
    assert not mark.exists(), "a run signed by an untrusted key must never start"
