"""Password, TLS and Sentinel Redis URLs: the store, the broker and the result backend all use them.

Each test starts its own redis-server (with ``--requirepass``, a TLS port with a certificate made
here, or a primary watched by a sentinel) and, for the end-to-end ones, a real worker whose only
Redis setting is ``CELERY_AGENT_REDIS_URL``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Worker

from celery_agent import TaskSpec
from celery_agent.app import create_app
from celery_agent.embedded import free_port, redis_server_binary
from celery_agent.errors import StateError
from celery_agent.state import TERMINAL, RunStore
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-pw"
MASTER = "agent-primary"
JOB = "import sys\nprint('hello from', sys.argv[0], flush=True)\n"

Start = Callable[..., int]


@pytest.fixture()
def start_redis(tmp_path: Path) -> Iterator[Start]:
    """start_redis(*args, port=None) -> the port of a new redis-server; all stopped after."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, port: int | None = None, sentinel: list[str] | None = None) -> int:
        port = port or free_port()
        folder = tmp_path / f"redis-{port}"
        folder.mkdir()
        conf = folder / "redis.conf"  # a sentinel rewrites its config file, so give it one
        lines = [f"port {port}", "bind 127.0.0.1", f"dir {folder}", *(sentinel or [])]
        conf.write_text("\n".join(lines) + "\n")
        argv = [redis_server_binary(), str(conf), *args, "--logfile", str(folder / "log")]
        argv += ["--sentinel"] if sentinel else ["--save", ""]
        with (folder / "stderr").open("wb") as err:
            procs.append(subprocess.Popen(argv, stdout=err, stderr=subprocess.STDOUT))
        ready = b"+monitor" if sentinel else b"eady to accept"

        def said() -> str:
            return (_read(folder / "stderr") + _read(folder / "log")).decode()

        def up() -> bool:  # (alive at every look)
            if procs[-1].poll() is not None:
                raise RuntimeError(said())
            return ready in _read(folder / "log")

        wait_for(f"redis on port {port} ready", up, 15, detail=said)
        return port

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def _read(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""


def run_job(url: str, make_repo, tmp_path: Path) -> tuple[dict, dict, list[str]]:
    """Run one job through a real worker that knows only ``url``; (record, result, log lines)."""
    queue = f"urls-{uuid.uuid4().hex[:8]}"
    worker = Worker(tmp_path / "home", url, queue, concurrency=1)
    try:
        worker.start()
        store = RunStore.from_url(url)
        spec = TaskSpec.parse({"repo": str(make_repo({"job.py": JOB})), "entry": "job.py",
                               "queue": queue, "executor": "local"})  # fmt: skip
        run_id = str(uuid.uuid4())
        store.create_run(run_id, spec.to_json(), queue)
        sender = create_app({"CELERY_AGENT_REDIS_URL": url})
        sent = sender.send_task("celery_agent.run", args=[spec.to_json()], task_id=run_id,
                                queue=queue)  # fmt: skip
        result = sent.get(timeout=60)  # through the result backend on the same URL
        record = wait_for(
            "the run to end",
            lambda: (r := store.get(run_id))["state"] in TERMINAL and r,
            30,
            every=0.1,
            detail=lambda: store.get(run_id),
        )
        return record, result, store.read_log(run_id)[1]
    except BaseException:
        print(worker.output()[-3000:])
        raise
    finally:
        worker.stop()


def assert_ran(record: dict, result: dict, lines: list[str]) -> None:
    assert record["state"] == "succeeded", record
    assert result["run_id"] == record["run_id"] and result["status"] == "succeeded", result
    assert any(line.startswith("hello from") for line in lines), lines


# -- password ------------------------------------------------------------------------------------
def test_a_password_url_runs_a_job_end_to_end(start_redis, make_repo, tmp_path):
    port = start_redis("--requirepass", PASSWORD)
    assert_ran(*run_job(f"redis://:{PASSWORD}@127.0.0.1:{port}/0", make_repo, tmp_path))


def test_a_wrong_or_missing_password_says_so_and_how_to_fix_it(start_redis):
    port = start_redis("--requirepass", PASSWORD)
    with pytest.raises(StateError) as wrong:
        RunStore.from_url(f"redis://:not-it@127.0.0.1:{port}/0").ping()
    assert "refused the password" in str(wrong.value) and "redis://:PASSWORD@" in str(wrong.value)
    with pytest.raises(StateError, match="wants a password"):
        RunStore.from_url(f"redis://127.0.0.1:{port}/0").list_runs()


def test_the_cli_names_a_refused_password_without_printing_it(start_redis):
    port = start_redis("--requirepass", PASSWORD)
    env = dict(os.environ, CELERY_AGENT_REDIS_URL=f"redis://:wrong-pw@127.0.0.1:{port}/0")
    done = subprocess.run([str(Path(sys.executable).with_name("celery-agent")), "ls"], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode != 0
    assert "refused the password" in done.stderr and "wrong-pw" not in done.stderr, done.stderr


# -- TLS -----------------------------------------------------------------------------------------
def make_certs(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for localhost / 127.0.0.1 signed by it (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def cert(subject: str, key, issuer: str, signer, ca: bool) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )  # fmt: skip
        if not ca:
            alt = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("celery-agent test CA", ca_key, "celery-agent test CA", ca_key, ca=True)
    server = cert("localhost", key, "celery-agent test CA", ca_key, ca=False)
    paths = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    return paths


@pytest.fixture()
def tls_redis(start_redis, tmp_path) -> tuple[int, dict[str, Path]]:
    """A redis-server that speaks only TLS (and wants a password); (port, cert paths)."""
    certs = make_certs(tmp_path)
    port = free_port()
    try:
        start_redis("--port", "0", "--tls-port", str(port), "--tls-cert-file", str(certs["cert"]),
                    "--tls-key-file", str(certs["key"]), "--tls-ca-cert-file", str(certs["ca"]),
                    "--tls-auth-clients", "no", "--requirepass", PASSWORD, port=port)  # fmt: skip
    except RuntimeError as err:
        if "tls-port" in str(err) and "Bad directive" in str(err):
            pytest.skip(f"{redis_server_binary()} was built without TLS")
        raise
    return port, certs


def test_a_tls_url_runs_a_job_end_to_end(tls_redis, make_repo, tmp_path):
    port, certs = tls_redis
    url = f"rediss://:{PASSWORD}@localhost:{port}/0?ssl_ca_certs={certs['ca']}"
    assert_ran(*run_job(url, make_repo, tmp_path))


def test_tls_mistakes_say_how_to_fix_them(tls_redis):
    port, certs = tls_redis
    with pytest.raises(StateError, match="add ssl_ca_certs="):
        RunStore.from_url(f"rediss://:{PASSWORD}@localhost:{port}/0").ping()
    with pytest.raises(StateError, match="use rediss://"):
        RunStore.from_url(f"redis://:{PASSWORD}@localhost:{port}/0").ping()
    relaxed = RunStore.from_url(f"rediss://:{PASSWORD}@localhost:{port}/0?ssl_cert_reqs=none")
    relaxed.ping()


# -- Sentinel ------------------------------------------------------------------------------------
def start_sentinel(start_redis: Start, primary: int) -> int:
    """A sentinel watching the primary on ``primary`` as MASTER (which wants PASSWORD)."""
    return start_redis(sentinel=[
        f"sentinel monitor {MASTER} 127.0.0.1 {primary} 1",
        f"sentinel auth-pass {MASTER} {PASSWORD}",
        f"sentinel down-after-milliseconds {MASTER} 1000",
        f"sentinel failover-timeout {MASTER} 5000",
    ])  # fmt: skip


def test_a_sentinel_url_runs_a_job_end_to_end(start_redis, make_repo, tmp_path):
    primary = start_redis("--requirepass", PASSWORD)
    sentinel = start_sentinel(start_redis, primary)
    url = f"sentinel://:{PASSWORD}@127.0.0.1:{sentinel}/0?master_name={MASTER}"
    assert_ran(*run_job(url, make_repo, tmp_path))


def test_the_store_follows_a_sentinel_failover(start_redis):
    auth = ("--requirepass", PASSWORD, "--masterauth", PASSWORD, "--repl-diskless-sync-delay", "0")
    primary = start_redis(*auth)
    replica = start_redis(*auth, "--replicaof", "127.0.0.1", str(primary))
    sentinel = start_sentinel(start_redis, primary)
    store = RunStore.from_url(f"sentinel://:{PASSWORD}@127.0.0.1:{sentinel}/0?master_name={MASTER}")
    store.create_run("before", {"entry": "x.py"}, "q")
    direct = {
        p: RunStore.from_url(f"redis://:{PASSWORD}@127.0.0.1:{p}/0") for p in (primary, replica)
    }
    watcher = RunStore.from_url(f"redis://127.0.0.1:{sentinel}/0").r
    wait_for(
        "the replica to copy the run",
        lambda: direct[replica].r.exists(direct[replica].keys.run("before")),
        30,
        every=0.1,
    )
    wait_for(
        "the sentinel to know the replica",
        lambda: watcher.execute_command("SENTINEL", "REPLICAS", MASTER),
        30,
        every=0.1,
    )
    direct[primary].r.shutdown(nosave=True)  # the primary dies; the sentinel promotes the replica
    wait_for(
        "the failover", lambda: promoted(watcher.sentinel_master(MASTER), replica), 30, every=0.1
    )
    store.create_run("after", {"entry": "x.py"}, "q")  # asks the sentinel for the new primary
    assert store.get("before")["state"] == store.get("after")["state"] == "queued"
    assert direct[replica].get("after")["state"] == "queued"
    assert direct[replica].r.execute_command("ROLE")[0] == "master"


def promoted(master: dict, port: int) -> bool:
    """Whether the sentinel's failover put ``port`` in charge (and the failover ended)."""
    return int(master["port"]) == port and master["is_master"] and not master["is_sdown"]
