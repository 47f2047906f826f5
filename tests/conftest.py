"""Shared fixtures: a real redis-server, real worker processes, real git repos, a local wheelhouse.

Integration tests talk to services the fixtures start on loopback; nothing is faked there.
"""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from flower_support import browser, flower_url, make_flower, plain_flower  # noqa: F401 (fixtures)

from celery_agent.guard import guard
from celery_agent.testing import WorkerProcess, git, init_repo, write_wheel

__all__ = ["ROOT", "Worker", "git", "write_wheel"]  # (imported by tests from here)

ROOT = Path(__file__).resolve().parent.parent
_fixture_pids: set[int] = set()


# -- leak check ---------------------------------------------------------------------------------
def _ours(proc: psutil.Process) -> bool:
    try:
        chain = [proc, *proc.parents()]
    except psutil.Error:
        return True
    return any(p.pid in _fixture_pids for p in chain) or proc.pid == guard().pid  # (lives on)


def _status(proc: psutil.Process) -> str:
    try:
        return str(proc.status())
    except psutil.Error:
        return psutil.STATUS_ZOMBIE


@pytest.fixture(autouse=True)
def no_leaked_processes() -> Iterator[None]:
    """Fail any test that leaves a child process of its own running."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    deadline = time.monotonic() + 3
    while True:
        left = [
            p
            for p in psutil.Process().children(recursive=True)
            if p.pid not in before and not _ours(p) and _status(p) != psutil.STATUS_ZOMBIE
        ]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for proc in left:
        proc.kill()
    assert not left, f"test leaked processes: {[(p.pid, p.cmdline()) for p in left]}"


# -- redis --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port; the client app is pointed at it."""
    from celery_agent.app import use_environment
    from celery_agent.embedded import EmbeddedRedis, free_port

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=free_port()).start()
    assert server.proc is not None
    _fixture_pids.add(server.proc.pid)
    os.environ["CELERY_AGENT_REDIS_URL"] = server.url
    os.environ["CELERY_AGENT_HOME"] = str(tmp_path_factory.mktemp("client-home"))
    use_environment()
    yield server.url
    gc.collect()  # results the tests dropped unsubscribe now, while their Redis still answers
    server.stop()


# -- rabbitmq -----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """A RabbitMQ broker: ``CELERY_AGENT_TEST_AMQP_URL`` (.ci/run starts one), else a node of
    its own that ``scripts/rabbitmq`` starts now and stops after the session."""
    given = os.environ.get("CELERY_AGENT_TEST_AMQP_URL")
    if given:
        yield given
        return
    from celery_agent.embedded import free_port

    script = ROOT / "scripts" / "rabbitmq"
    env = dict(os.environ, RABBITMQ_PORT=str(free_port()), RABBITMQ_DIST_PORT=str(free_port()))
    done = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        pytest.fail(f"no RabbitMQ for the tests (scripts/rabbitmq start): {done.stderr[-2000:]}")
    yield done.stdout.strip()
    subprocess.run([script, "stop"], env=env, capture_output=True, timeout=120)


# -- s3 -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def _s3_server(home: Path, **env: str) -> Iterator[object]:
    from s3_support import S3Server

    from celery_agent.embedded import free_port

    server = S3Server(free_port())
    proc = server.proc = _spawn(server.argv(), dict(os.environ, **env), home / "s3.log", home)
    try:
        yield server.wait_ready()
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real S3-compatible HTTP server (moto's standalone server) on a free loopback port."""
    with _s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture()
def s3_with_iam(tmp_path: Path) -> Iterator[object]:
    """An S3 server of its own that checks credentials and IAM policies once the test's first
    ``S3Server.SETUP_ACTIONS`` requests (which set up its users and buckets) are done."""
    from s3_support import S3Server

    env = {"INITIAL_NO_AUTH_ACTION_COUNT": str(S3Server.SETUP_ACTIONS + 1)}  # (+ wait_ready's)
    with _s3_server(tmp_path, **env) as server:
        yield server


@pytest.fixture()
def store(redis_url: str):
    """The run store on the test Redis."""
    from celery_agent.app import get_store

    return get_store()


# -- workers ------------------------------------------------------------------------------------
def _spawn(argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start a service process of the tests in its own session, output to ``log``; the leak check
    knows it (and its children) as a fixture's."""
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            argv, env=env, stdout=fh, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd,
        )  # fmt: skip
    _fixture_pids.add(proc.pid)
    return proc


class Worker(WorkerProcess):
    """A real `celery -A celery_agent worker` process; the leak check knows it as a fixture's."""

    def __init__(
        self,
        home: Path,
        url: str,
        queues: str,
        concurrency: int = 2,
        args: tuple[str, ...] = (),
        **env: str,
    ) -> None:
        name = f"w{uuid.uuid4().hex[:6]}"
        super().__init__("celery_agent", queues, home, url, name, concurrency, args, env)

    def launch(self) -> Worker:
        super().launch()
        assert self.proc is not None
        _fixture_pids.add(self.proc.pid)
        return self


@pytest.fixture(scope="session")
def worker(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """One real worker for the session, on its own queue."""
    w = Worker(tmp_path_factory.mktemp("worker-home"), redis_url, f"it-{uuid.uuid4().hex[:8]}")
    w.start()
    yield w
    w.stop()


@pytest.fixture()
def make_worker(redis_url: str, tmp_path: Path) -> Iterator[object]:
    """Start extra workers for one test; they are stopped after it.

    ``make_worker(queue, concurrency=1, args=("--gpus", "0"), CELERY_AGENT_FAKE_GPUS="2")``: extra
    worker CLI arguments in ``args``, extra environment variables as keywords.
    """
    started: list[Worker] = []

    def factory(queues: str, **kw: object) -> Worker:
        w = Worker(tmp_path / f"home-{len(started)}", redis_url, queues, **kw).start()  # type: ignore[arg-type]
        started.append(w)
        return w

    yield factory
    for w in started:
        w.stop()


class Beat:
    """A real `celery -A celery_agent beat` process."""

    def __init__(self, home: Path, url: str, **env: str) -> None:
        self.home = home
        self.log = home / "beat.log"
        self.env = dict(os.environ, CELERY_AGENT_REDIS_URL=url, CELERY_AGENT_HOME=str(home), **env)
        self.argv = [sys.executable, "-m", "celery", "-A", "celery_agent", "beat",
                     "-s", str(home / "beat-schedule"), "--loglevel", "INFO"]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Beat:
        self.home.mkdir(parents=True, exist_ok=True)
        self.proc = _spawn(self.argv, self.env, self.log, self.home)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture()
def make_beat(redis_url: str, tmp_path: Path) -> Iterator[object]:
    """Start `celery beat` processes for one test (``make_beat(**env)``); stopped after it."""
    started: list[Beat] = []

    def factory(**env: str) -> Beat:
        b = Beat(tmp_path / f"beat-{len(started)}", redis_url, **env).start()
        started.append(b)
        return b

    yield factory
    for b in started:
        b.stop()


# -- git ----------------------------------------------------------------------------------------
@pytest.fixture()
def make_repo(tmp_path: Path):
    """make_repo({'train.py': '...'}) -> path of a new git repo with those files committed."""

    def factory(files: dict[str, str], name: str = "repo") -> Path:
        path = tmp_path / name
        path.mkdir()
        init_repo(path, files)
        return path

    return factory


# -- a wheelhouse made on the spot (no index needed) ---------------------------------------------
@pytest.fixture()
def wheelhouse(tmp_path: Path) -> Path:
    """A folder with wheel 'cademo' 1.0 (module cademo, VERSION = '1.0')."""
    folder = tmp_path / "wheels"
    write_wheel(folder, "cademo", "1.0", "VERSION = '1.0'\n")
    return folder
