"""Fixtures of the browser tests (registered by tests/conftest.py): a real Flower process (the
plain Celery way or through ``celery-agent flower``) and a real headless Chromium driven over
DevTools (see :mod:`browser_support`)."""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from browser_support import CHROMIUM, Browser

from celery_agent import RunHandle
from celery_agent.testing import FlowerProcess, wait_for

ROOT = Path(__file__).resolve().parents[1]
#: where the browser tests save their screenshots
ARTIFACTS = ROOT / "tests" / "artifacts"


def get(url: str, timeout: float = 5, headers: dict[str, str] | None = None) -> bytes:
    """The body of a GET (urllib raises HTTPError for a 4xx/5xx answer)."""
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return bytes(resp.read())


class Flowers:
    """Flower processes started for tests, stopped together."""

    def __init__(self, redis_url: str, logs: Path) -> None:
        self.redis_url, self.logs = redis_url, logs
        self.started: list[FlowerProcess] = []

    def start(self, *args: str, plain: bool = False, api: bool = True) -> str:
        """Start Flower on a free port with these Flower arguments; returns its base URL (see
        :class:`~celery_agent.testing.FlowerProcess`). ``api`` sets FLOWER_UNAUTHENTICATED_API."""
        env = dict(os.environ)
        env.pop("FLOWER_UNAUTHENTICATED_API", None)
        if api:
            env["FLOWER_UNAUTHENTICATED_API"] = "true"
        log = self.logs / f"flower-{len(self.started)}.log"
        flower = FlowerProcess(self.redis_url, log, args, plain=plain, env=env, cwd=ROOT)
        self.started.append(flower)
        return flower.start().url

    def stop(self) -> None:
        """Stop every Flower started (TERM, then KILL after 15 s)."""
        for flower in self.started:
            flower.stop()
        self.started.clear()


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


def wait_state(run: RunHandle, wanted: str, timeout: float = 60) -> None:
    """Wait until ``run`` is in state ``wanted``."""
    wait_for(
        f"run {run.id} {wanted}",
        lambda: run.state == wanted,
        timeout,
        every=0.1,
        detail=lambda: f"it is {run.state}",
    )
