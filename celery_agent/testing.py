"""Helpers the project's tests and benchmarks share: git repositories, local wheels, the one
wait for a condition, and real ``celery -A <app> worker`` and Flower processes with their own log
file.

Nothing in the agent imports this module; it is here so that ``tests/`` and ``benchmarks/`` use
one copy of each helper.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .embedded import free_port

T = TypeVar("T")

#: ``celery-agent flower`` as a ``python -c`` program (no console script needed)
START_FLOWER = (
    "import sys; from celery_agent.cli_services import flower; "
    "sys.exit(flower.main(args=sys.argv[1:], standalone_mode=False))"
)

#: author and committer of the commits these helpers make
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.com",
}  # fmt: skip


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd``; return its stdout (stripped). Raises CalledProcessError on failure."""
    env = dict(os.environ, **GIT_ENV)
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def init_repo(path: Path, files: Mapping[str, str], message: str = "initial") -> str:
    """A new git repository at ``path`` (branch main) with ``files`` committed; the commit's sha."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", message)
    return git(path, "rev-parse", "HEAD")


def write_wheel(folder: Path, name: str, version: str, code: str) -> Path:
    """Write a pure-Python wheel ``name-version`` holding module ``name`` with ``code``."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": code,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: celery-agent\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }  # fmt: skip
    path = folder / f"{name}-{version}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(path, "w") as zf:
        for arc, text in files.items():
            data = text.encode()
            zf.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arc},sha256={digest},{len(data)}")
        record.append(f"{dist}/RECORD,,")
        zf.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return path


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float, group: bool = False) -> None:
    """SIGTERM to ``proc`` (to its whole process group with ``group``), then, after ``timeout``
    seconds, SIGKILL to its group; nothing when it has ended."""
    if proc is None or proc.poll() is not None:
        return
    if group:
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_for(
    what: str,
    probe: Callable[[], T],
    timeout: float,
    every: float = 0.05,
    retry_on: tuple[type[Exception], ...] = (),
    detail: Callable[[], object] | None = None,
) -> T:
    """Call ``probe`` every ``every`` seconds until it returns something truthy; return that.

    An exception of a type in ``retry_on`` counts as "not yet" (a service still starting); any
    other propagates (a probe that asserts checks something at every look). At the deadline it
    raises AssertionError naming ``what`` was waited for, the probe's last answer or error, and
    what ``detail()`` says then (a log's tail).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except retry_on as exc:
            last: object = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            told = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"waited {timeout:g} s for {what}; last answer: {last!r}{told}")
        time.sleep(every)


class WorkerProcess:
    """A ``celery -A <app> worker`` process serving ``queues``, named ``<name>@%h``, with its own
    home (``CELERY_AGENT_HOME``) and log file, on the Redis at ``url``."""

    def __init__(
        self,
        app: str,
        queues: str,
        home: Path,
        url: str,
        name: str,
        concurrency: int = 2,
        args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.app, self.queues, self.home, self.url, self.name = app, queues, home, url, name
        self.log = log or home / f"{name}.log"
        self.env = dict(os.environ, CELERY_AGENT_REDIS_URL=url, CELERY_AGENT_HOME=str(home))
        self.env |= env or {}
        self.argv = [
            sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queues,
            "-c", str(concurrency), "-n", f"{name}@%h", "--loglevel", "INFO",
            "--without-mingle", "--without-gossip", *args,
        ]  # fmt: skip
        self.preexec_fn = preexec_fn
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> WorkerProcess:
        """Start the worker and wait until it says it is ready."""
        return self.launch().wait_ready(timeout)

    def launch(self) -> WorkerProcess:
        """Start the worker process in a session of its own, without waiting for it."""
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as fh:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.home,
                preexec_fn=self.preexec_fn,
            )  # fmt: skip
        return self

    def wait_ready(self, timeout: float = 60) -> WorkerProcess:
        """Wait until the launched worker says it is ready; stop it and raise if it does not."""
        assert self.proc is not None, "launch() the worker first"
        deadline = time.monotonic() + timeout
        while b" ready." not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"worker {self.name} did not start:\n{self.tail()}")
            time.sleep(0.1)
        return self

    def stop(self, timeout: float = 30) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL to the whole group."""
        stop_process(self.proc, timeout)

    def output(self) -> str:
        """The worker's log so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, chars: int = 3000) -> str:
        """The end of the worker's log."""
        return self.output()[-chars:]


class FlowerProcess:
    """A Flower process on a free loopback port with its own log file, on the Redis at
    ``redis_url``: ``celery-agent flower``, or with ``plain`` the Celery way (``celery -A
    celery_agent flower``). ``args`` are Flower's; ``url`` is its base URL (with the
    ``--url_prefix`` if one is given)."""

    def __init__(
        self,
        redis_url: str,
        log: Path,
        args: Sequence[str] = (),
        plain: bool = False,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        port = free_port()
        self.log, self.cwd = log, cwd
        self.env = dict(os.environ if env is None else env, CELERY_AGENT_REDIS_URL=redis_url)
        head = ["-m", "celery", "-A", "celery_agent", "flower"] if plain else ["-c", START_FLOWER]
        self.argv = [sys.executable, *head, f"--port={port}", "--address=127.0.0.1", *args]
        prefix = next(
            (a.split("=", 1)[1].strip("/") for a in args if a.startswith("--url_prefix=")), ""
        )
        self.url = f"http://127.0.0.1:{port}" + (f"/{prefix}" if prefix else "")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> FlowerProcess:
        """Start Flower in a session of its own and wait until its health check answers OK;
        stop it and raise (naming its log's tail) if it exits or does not answer in time."""
        with self.log.open("wb") as fh:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=fh, stderr=subprocess.STDOUT, cwd=self.cwd,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        try:
            wait_for("Flower to answer its health check", self._healthy, timeout, every=0.2,
                     retry_on=(OSError,), detail=self.tail)  # fmt: skip
        except BaseException:
            self.stop()
            raise
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"flower exited with {self.proc.returncode}:\n{self.tail()}")
        with urllib.request.urlopen(self.url + "/healthcheck", timeout=5) as answer:
            return bytes(answer.read()) == b"OK"

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM to its group, then SIGKILL after ``timeout``."""
        stop_process(self.proc, timeout, group=True)

    def tail(self, chars: int = 3000) -> str:
        """The end of Flower's log."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""
