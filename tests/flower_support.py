"""Fixtures of the browser tests (registered by tests/conftest.py): a real Flower process (the
plain Celery way or through ``celery-agent flower``) and a real headless Chromium driven over
DevTools (see :mod:`browser_support`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from browser_support import CHROMIUM, Browser

from celery_agent.embedded import free_port
from celery_agent.testing import wait_for

ROOT = Path(__file__).resolve().parents[1]
#: where the browser tests save their screenshots
ARTIFACTS = ROOT / "tests" / "artifacts"
START_FLOWER = (
    "import sys; from celery_agent.cli_services import flower; "
    "sys.exit(flower.main(args=sys.argv[1:], standalone_mode=False))"
)


def get(url: str, timeout: float = 5, headers: dict[str, str] | None = None) -> bytes:
    """The body of a GET (urllib raises HTTPError for a 4xx/5xx answer)."""
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return bytes(resp.read())


class Flowers:
    """Flower processes started for tests, stopped together."""

    def __init__(self, redis_url: str, logs: Path) -> None:
        self.redis_url, self.logs = redis_url, logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, plain: bool = False, api: bool = True) -> str:
        """Start Flower on a free port with these Flower arguments; returns its base URL (with
        the ``--url_prefix`` if given). ``plain=True`` starts it the Celery way (``celery -A
        celery_agent flower``), else as ``celery-agent flower``; ``api`` sets
        FLOWER_UNAUTHENTICATED_API."""
        port = free_port()
        env = dict(os.environ, CELERY_AGENT_REDIS_URL=self.redis_url)
        env.pop("FLOWER_UNAUTHENTICATED_API", None)
        if api:
            env["FLOWER_UNAUTHENTICATED_API"] = "true"
        head = ["-m", "celery", "-A", "celery_agent", "flower"] if plain else ["-c", START_FLOWER]
        argv = [sys.executable, *head, f"--port={port}", "--address=127.0.0.1", *args]
        log_path = self.logs / f"flower-{port}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        self.procs.append(proc)
        prefix = next(
            (a.split("=", 1)[1].strip("/") for a in args if a.startswith("--url_prefix=")), ""
        )
        url = f"http://127.0.0.1:{port}" + (f"/{prefix}" if prefix else "")
        _wait_healthy(url, proc, log_path)
        return url

    def stop(self) -> None:
        """Stop every Flower started (TERM, then KILL after 15 s)."""
        for proc in self.procs:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


@pytest.fixture()
def make_flower(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start Flowers for one test (see :meth:`Flowers.start`); they stop after it."""
    flowers = Flowers(redis_url, tmp_path)
    yield flowers.start
    flowers.stop()


@pytest.fixture(scope="module")
def flower_url(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`celery-agent flower` on a free port, API open (FLOWER_UNAUTHENTICATED_API), shared by
    the tests of a module."""
    flowers = Flowers(redis_url, tmp_path_factory.mktemp("flower"))
    yield flowers.start()
    flowers.stop()


@pytest.fixture(scope="module")
def plain_flower(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Flower started the Celery way (`celery -A celery_agent flower`), API open, shared by the
    tests of a module."""
    flowers = Flowers(redis_url, tmp_path_factory.mktemp("flower"))
    yield flowers.start(plain=True)
    flowers.stop()


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    def healthy() -> bool:  # (alive at every look)
        if proc.poll() is not None:
            raise RuntimeError(f"flower did not start:\n{log.read_text()[-3000:]}")
        return get(url + "/healthcheck", 1) == b"OK"

    wait_for(
        "Flower to answer its health check",
        healthy,
        30,
        every=0.2,
        retry_on=(OSError,),
        detail=lambda: log.read_text()[-3000:],
    )


@pytest.fixture()
def browser(tmp_path: Path) -> Iterator[Browser]:
    """A headless Chromium (Debian's) with one page, driven over DevTools; closed after."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    chromium = Browser(tmp_path / f"profile-{time.monotonic_ns()}")
    try:
        yield chromium
    finally:
        chromium.close()
