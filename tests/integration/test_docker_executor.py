"""The docker executor against a real Docker engine, through a real worker process.

The image is ``celery-agent-test:py3``, built with no registry by ``scripts/build-test-image``
(run here; it does nothing when the image is current). Tests skip only when no engine answers.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, write_wheel
from test_env_sources import RUN_PKG, commit, pyproject, uv

from celery_agent import TaskSpec, submit, submit_task
from celery_agent.cli import main
from celery_agent.errors import ExecutorUnavailable
from celery_agent.executors.docker import reap_stale_containers
from celery_agent.executors.docker_engine import connect
from celery_agent.executors.docker_index import worker_index
from celery_agent.executors.docker_options import (
    CACHE_VOLUME,
    LABEL_PREFIX,
    MANAGED_LABEL,
    NETWORK_ROLE,
    ROLE_LABEL,
)
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration

IMAGE = "celery-agent-test:py3"

TRAIN = """\
import argparse, os
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--epochs", type=int, default=1)
a = p.parse_args()
print("lr", a.lr, "epochs", a.epochs)
print("PATH", os.environ["PATH"])
print("vars", " ".join(sorted(os.environ)))
print("from", os.environ.get("FROM_SPEC"), os.environ.get("FROM_DOCKER"))
open(os.path.join(os.environ["CELERY_AGENT_OUTPUT_DIR"], "out.txt"), "w").write("done")
"""

SLEEPER = """\
import time
print("started", flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A client of the local engine, with the test image built; skips when no engine answers."""
    try:
        client = connect()
    except ExecutorUnavailable as exc:
        pytest.skip(f"no Docker engine reachable, docker executor not tested: {exc}")
    script = ROOT / "scripts" / "build-test-image"
    done = subprocess.run([str(script)], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "build-test-image:" in done.stdout
    yield client
    client.close()


def docker_spec(repo: Path, worker: Any, **kw: Any) -> TaskSpec:
    docker = {"image": IMAGE} | kw.pop("docker", {})
    fields = {"repo": str(repo), "entry": "train.py", "queue": worker.queues, "executor": "docker"}
    return TaskSpec.parse(fields | {"requirements": [], "docker": docker} | kw)


def containers_of(client: Any, run_id: str) -> list[Any]:
    """The run's containers (sparse: one removed while listed is not looked up)."""
    label = f"{LABEL_PREFIX}run-id={run_id}"
    return list(client.containers.list(all=True, filters={"label": label}, sparse=True))


def removed(client: Any, run_id: str, timeout: float = 30) -> bool:
    """True once the run's container is gone (it is removed in the background); fails naming
    it after ``timeout``."""
    return wait_for(
        f"the container of {run_id} removed",
        lambda: not containers_of(client, run_id),
        timeout,
        every=0.1,
    )


def wait_for_line(store: Any, run_id: str, text: str, timeout: float = 120) -> None:
    wait_for(
        f"{text!r} in the log of {run_id}",
        lambda: any(text in line for line in store.read_log(run_id)[1]),
        timeout,
        every=0.2,
        detail=lambda: store.get(run_id),
    )


def test_run_in_a_container_gets_params_output_dir_and_its_own_env(
    docker_client, worker, make_repo, store
):
    repo = make_repo({"train.py": TRAIN})
    spec = docker_spec(
        repo, worker, params={"lr": 0.5}, args=["--epochs", "3"], env={"FROM_SPEC": "s"},
        docker={"env": {"FROM_DOCKER": "d"}},
    )  # fmt: skip
    out = submit_task.delay(spec).get(timeout=180)
    assert out["status"] == "succeeded", out
    assert out["params"] == {"lr": 0.5, "epochs": 3}
    _, lines = store.read_log(out["run_id"])
    assert "lr 0.5 epochs 3" in lines and "from s d" in lines
    assert "PATH /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in lines
    names = next(line for line in lines if line.startswith("vars ")).split()[1:]
    assert "CELERY_AGENT_RUN_ID" in names and "OMP_NUM_THREADS" in names
    assert not [n for n in names if "REDIS" in n or n in ("VIRTUAL_ENV", "SHELL")]
    assert Path(out["output_dir"], "out.txt").read_text() == "done"
    record = store.get(out["run_id"])
    assert record["env_key"] == docker_client.images.get(IMAGE).short_id.split(":")[1][:12]
    assert "unused_params" not in record  # the hook's usage record came out of the container
    assert not [line for line in lines if "parameters not checked" in line]
    assert removed(docker_client, out["run_id"])


def test_requirements_install_in_the_container_from_a_local_wheelhouse(
    docker_client, worker, make_repo, wheelhouse, store
):
    repo = make_repo({"train.py": "import cademo\nprint('cademo', cademo.VERSION)\n"})
    spec = docker_spec(
        repo, worker, requirements=["cademo"], find_links=[str(wheelhouse)], no_index=True
    )
    out = submit_task.delay(spec).get(timeout=180)
    assert out["status"] == "succeeded", out
    _, lines = store.read_log(out["run_id"])
    assert any("installing requirements in a container of image" in line for line in lines)
    assert "cademo 1.0" in lines
    assert any("Successfully installed cademo-1.0" in line for line in lines)
    assert docker_client.volumes.get(CACHE_VOLUME).name == CACHE_VOLUME


def test_a_projects_dependencies_install_in_the_container_and_its_code_is_importable(
    docker_client, worker, make_repo, wheelhouse, store
):
    repo = make_repo({
        "pyproject.toml": '[project]\nname = "mypkg"\nversion = "0.1"\ndependencies = ["cademo"]\n',
        "src/mypkg/__init__.py": "CODE = 'boxed'\n",
        "examples/run.py": "import mypkg, cademo\nprint('code', mypkg.CODE, cademo.VERSION)\n",
    })  # fmt: skip
    spec = docker_spec(repo, worker, entry="examples/run.py", requirements=None,
                       find_links=[str(wheelhouse)], no_index=True)  # fmt: skip
    out = submit_task.delay(spec).get(timeout=180)
    assert out["status"] == "succeeded", out
    assert "code boxed 1.0" in out["log_tail"]
    assert store.get(out["run_id"])["env_source"].startswith("pyproject.toml (sha256 ")


def test_a_uv_lock_installs_exactly_the_locked_versions_in_the_container(
    docker_client, worker, make_repo, tmp_path, store
):
    wheels = tmp_path / "locked-wheels"
    write_wheel(wheels, "cademo", "1.0", "VERSION = '1.0'\n")
    write_wheel(wheels, "cademo", "2.0", "VERSION = '2.0'\n")
    repo = make_repo({
        "pyproject.toml": pyproject('"cademo<2"'),
        "src/mypkg/__init__.py": "CODE = 'locked'\n",
        "examples/run.py": RUN_PKG,
        "requirements.txt": "no-such-package-at-all\n",  # the lock comes first
    })  # fmt: skip
    uv(repo, "lock", "--no-index", "--find-links", str(wheels))
    commit(repo, {"pyproject.toml": pyproject('"cademo"')})  # unpinned now: 2.0 without the lock
    spec = docker_spec(repo, worker, entry="examples/run.py", requirements=None,
                       find_links=[str(wheels)], no_index=True)  # fmt: skip
    out = submit_task.delay(spec).get(timeout=180)
    assert out["status"] == "succeeded", out
    assert "code locked dep 1.0" in out["log_tail"], out["log_tail"]
    record = store.get(out["run_id"])
    digest = hashlib.sha256((repo / "uv.lock").read_bytes()).hexdigest()[:12]
    assert record["env_source"] == f"uv.lock (sha256 {digest})"
    assert record["freeze"] == ["cademo==1.0"]
    commit(repo, {"src/mypkg/__init__.py": "CODE = 'new'\n"})  # the lock stays: its env reused
    again = submit_task.delay(spec).get(timeout=180)
    assert again["status"] == "succeeded" and "code new dep 1.0" in again["log_tail"], again
    assert store.get(again["run_id"])["env_key"] == record["env_key"]
    assert store.get(again["run_id"])["env_hit"] == "1"


def _worker_has_its_own_ca() -> bool:
    """Whether this worker reaches its index through a CA of its own (PIP_CERT, pip's cert)."""
    index = worker_index()
    return any(k in index.env for k in ("PIP_CERT", "SSL_CERT_FILE")) or any(
        line.startswith("cert") for line in index.files.get("pip.conf", "").splitlines()
    )


def test_a_requirement_from_the_default_index_installs_once_and_is_reused(
    docker_client, worker, make_repo, store, capsys
):
    repo = make_repo({"train.py": "import six\nprint('six', six.__version__)\n"})
    spec = docker_spec(repo, worker, requirements=["six"])
    first = submit_task.delay(spec).get(timeout=300)
    assert first["status"] == "succeeded", first
    _, lines = store.read_log(first["run_id"])
    assert any(line.startswith("six 1.") for line in lines)
    assert any("index configuration:" in line for line in lines)
    second = submit_task.delay(spec).get(timeout=180)
    assert second["status"] == "succeeded", second
    _, again = store.read_log(second["run_id"])
    assert any("env: requirements reused in " in line for line in again), again
    assert not any("Successfully installed" in line for line in again)
    record = store.get(second["run_id"])
    assert record["env_key"] == store.get(first["run_id"])["env_key"] and record["env_hit"]
    assert any(p.startswith("six==") for p in record["freeze"])
    assert record["env_index"] == store.get(first["run_id"])["env_index"]
    if _worker_has_its_own_ca():
        assert "pip.conf" in record["env_index"] or "PIP_CERT" in record["env_index"]
    capsys.readouterr()
    assert main(["show", second["run_id"]]) == 0
    assert "env_index" in capsys.readouterr().out


SEES_INDEX = """\
import os, sys
name, paths = sys.argv[1], sys.argv[2:]
print("sees", os.environ.get(name) is not None, all(os.path.exists(p) for p in paths))
"""


def test_index_config_run_carries_the_index_into_the_run_as_well(docker_client, worker, make_repo):
    index = worker_index()
    if not index.mounts:
        pytest.skip("this worker's index configuration names no file to carry")
    args = [sorted(index.env)[0], *(m.source for m in index.mounts)]
    repo = make_repo({"train.py": SEES_INDEX})
    out = submit_task.delay(docker_spec(repo, worker, args=args)).get(timeout=180)
    assert out["status"] == "succeeded", out
    assert any(line.startswith("sees False ") for line in out["log_tail"]), out["log_tail"]
    carried = docker_spec(repo, worker, args=args, docker={"index_config": "run"})
    out = submit_task.delay(carried).get(timeout=180)
    assert out["status"] == "succeeded" and "sees True True" in out["log_tail"], out


def test_index_config_none_fails_naming_the_index_the_tls_problem_and_what_to_set(
    docker_client, worker, make_repo
):
    if not _worker_has_its_own_ca():
        pytest.skip("this worker reaches its package index without a CA of its own")
    repo = make_repo({"train.py": "import six\n"})
    spec = docker_spec(
        repo, worker, requirements=["six"], docker={"index_config": "none"}
    )  # fmt: skip
    out = submit_task.delay(spec).get(timeout=300)
    assert out["status"] == "failed" and out["error_stage"] == "env", out
    assert "TLS certificate of the package index https://" in out["error"]
    assert "docker.index_config is 'none'" in out["error"]
    assert "set docker.index_config to 'install'" in out["error"]


def test_setup_commands_make_a_derived_image_once_and_a_non_root_user_writes_its_output(
    docker_client, worker, make_repo, store
):
    marker = uuid.uuid4().hex[:8]
    script = (
        "import os, six\n"
        "print('setup', open('/etc/celery-agent-setup.txt').read().strip(), 'uid', os.getuid())\n"
        "open(os.path.join(os.environ['CELERY_AGENT_OUTPUT_DIR'], 'o.txt'), 'w').write('ok')\n"
    )
    setup = [f"echo {marker} > /etc/celery-agent-setup.txt"]
    spec = docker_spec(
        make_repo({"train.py": script}), worker, requirements=["six"],
        docker={"setup": setup, "user": "1000:1000"},
    )  # fmt: skip
    first = submit_task.delay(spec).get(timeout=300)
    assert first["status"] == "succeeded", first
    _, lines = store.read_log(first["run_id"])
    assert f"setup {marker} uid 1000" in lines
    assert any("env: building setup image celery-agent-setup:" in line for line in lines)
    assert Path(first["output_dir"], "o.txt").read_text() == "ok"
    second = submit_task.delay(spec).get(timeout=180)
    assert second["status"] == "succeeded", second
    _, again = store.read_log(second["run_id"])
    tag = next(line.split()[4] for line in again if "env: setup image " in line)
    assert any(line.endswith(" reused") and tag in line for line in again)
    assert docker_client.images.get(tag).attrs["Config"]["User"] == ""
    docker_client.images.remove(tag, force=True)


NET = """\
import socket, sys
socket.create_connection(("pypi.org", 443), timeout=30).close()
print("net ok", socket.gethostname() == sys.argv[1])
"""


def test_runs_share_the_workers_network_holder_unless_bridge_is_asked(
    docker_client, worker, make_repo, store
):
    repo = make_repo({"train.py": NET})
    shared = submit_task.delay(docker_spec(repo, worker, args=["-"])).get(timeout=180)
    assert shared["status"] == "succeeded", shared
    mine = [
        f"{ROLE_LABEL}={NETWORK_ROLE}",
        f"{LABEL_PREFIX}worker={worker.name}@{socket.gethostname()}",
    ]
    holders = docker_client.containers.list(filters={"label": mine})
    names = [c.attrs["Config"]["Hostname"] for c in holders]
    again = submit_task.delay(docker_spec(repo, worker, args=[names[0]])).get(timeout=180)
    assert again["status"] == "succeeded" and "net ok True" in again["log_tail"], again
    own = docker_spec(repo, worker, args=[names[0]], docker={"network": "bridge"})
    alone = submit_task.delay(own).get(timeout=180)
    assert alone["status"] == "succeeded" and "net ok False" in alone["log_tail"], alone


def test_cancel_stops_and_removes_the_container(docker_client, worker, make_repo, store):
    run = submit(docker_spec(make_repo({"train.py": SLEEPER}), worker, grace=2))
    wait_for_line(store, run.id, "started")
    assert len(containers_of(docker_client, run.id)) == 1
    t0 = time.monotonic()
    assert run.cancel() == "running"
    out = run.result.get(timeout=60)
    assert out["status"] == "aborted" and time.monotonic() - t0 < 30
    assert removed(docker_client, run.id)


def test_timeout_stops_the_container_and_ends_timed_out(docker_client, worker, make_repo, store):
    run = submit(docker_spec(make_repo({"train.py": SLEEPER}), worker, timeout=5, grace=0))
    out = run.result.get(timeout=90)
    assert out["status"] == "timed_out" and "timed out" in out["error"]
    assert "started" in out["log_tail"]
    assert out["usage"]["max_rss_bytes"] > 0, "a run of seconds has its memory sampled"
    assert removed(docker_client, run.id)


def test_missing_image_with_pull_never_fails_naming_the_image(docker_client, worker, make_repo):
    spec = docker_spec(
        make_repo({"train.py": "print(1)\n"}), worker,
        docker={"image": "celery-agent-absent:1", "pull": "never"},
    )  # fmt: skip
    out = submit_task.delay(spec).get(timeout=60)
    assert out["status"] == "failed" and out["error_stage"] == "env"
    assert "image 'celery-agent-absent:1' is not on this worker" in out["error"]
    assert "pull policy is 'never'" in out["error"]


def test_missing_image_that_cannot_be_pulled_fails_quickly(docker_client, worker, make_repo):
    spec = docker_spec(
        make_repo({"train.py": "print(1)\n"}), worker,
        docker={"image": "localhost:1/celery-agent-absent:1", "pull": "if-missing"},
    )  # fmt: skip
    t0 = time.monotonic()
    out = submit_task.delay(spec).get(timeout=180)
    assert out["status"] == "failed" and time.monotonic() - t0 < 150
    assert "cannot pull image 'localhost:1/celery-agent-absent:1'" in out["error"]


def test_unreachable_engine_fails_the_run_and_the_worker_keeps_working(make_worker, make_repo):
    queue = f"nodocker-{uuid.uuid4().hex[:6]}"
    make_worker(queue, DOCKER_HOST="unix:///nonexistent/docker.sock")
    repo = make_repo({"train.py": "print('ran here')\n"})
    spec = {"repo": str(repo), "entry": "train.py", "queue": queue, "requirements": []}
    out = submit_task.delay(spec | {"executor": "docker", "docker": {"image": IMAGE}}).get(60)
    assert out["status"] == "failed" and out["error_stage"] == "env"
    assert "no Docker engine reachable at unix:///nonexistent/docker.sock" in out["error"]
    assert "DOCKER_HOST" in out["error"]
    after = submit_task.delay(spec | {"executor": "local"}).get(timeout=60)
    assert after["status"] == "succeeded" and "ran here" in after["log_tail"]


def test_reaping_removes_only_the_named_workers_containers(docker_client):
    worker = f"dead-{uuid.uuid4().hex[:6]}@host"
    other = f"alive-{uuid.uuid4().hex[:6]}@host"
    made = [
        docker_client.containers.create(
            IMAGE, ["sleep", "600"], labels={MANAGED_LABEL: "true", f"{LABEL_PREFIX}worker": name}
        )
        for name in (worker, worker, other)
    ]
    made[0].start()
    holder_labels = {
        MANAGED_LABEL: "true",
        f"{LABEL_PREFIX}worker": worker,
        ROLE_LABEL: NETWORK_ROLE,
    }
    made.append(docker_client.containers.create(IMAGE, ["sleep", "600"], labels=holder_labels))
    try:
        assert reap_stale_containers(worker) == 2
        assert reap_stale_containers(worker) == 0
        left = docker_client.containers.list(all=True, filters={"label": MANAGED_LABEL})
        assert {made[2].id, made[3].id} <= {c.id for c in left}, "the network holder is kept"
        assert not {made[0].id, made[1].id} & {c.id for c in left}
    finally:
        for container in made:
            with contextlib.suppress(Exception):
                container.remove(force=True)


def test_a_worker_that_starts_removes_what_its_crashed_predecessor_left(docker_client, make_worker):
    name = f"crashed-{uuid.uuid4().hex[:6]}"
    label = f"{name}@{socket.gethostname()}"
    orphan = docker_client.containers.create(
        IMAGE, ["sleep", "600"], labels={MANAGED_LABEL: "true", f"{LABEL_PREFIX}worker": label}
    )
    orphan.start()
    try:
        make_worker(f"q-{name}", args=("-n", f"{name}@%h"))
        wait_for(
            "the orphan container removed",
            lambda: not docker_client.containers.list(all=True, filters={"id": orphan.id}),
            30,
            every=0.2,
        )
    finally:
        with contextlib.suppress(Exception):
            orphan.remove(force=True)
