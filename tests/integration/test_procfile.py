"""`honcho start` with the shipped Procfile, from a fresh clone, on this machine as it is and with
two declared GPUs (both stacks at once, to keep the test short): every process comes up and stays
up for 20 s, a run submitted through each succeeds (on GPU 1's own queue with the GPUs), and
SIGTERM to honcho drains and stops everything: a run still going goes back to its queue, every
process ends, and the data Redis wrote is whole."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from celery_agent.embedded import EmbeddedRedis, free_port
from celery_agent.gpus import fake_uuid
from celery_agent.monitoring.gpu import devices
from celery_agent.state import RunStore
from celery_agent.testing import wait_for
from celery_agent.workers import WorkerRegistry

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HOST = socket.gethostname()
WINDOW = 20.0  #: seconds every process must stay up
EXPERIMENT = {
    "hi.py": "import os\nprint('hello from', os.environ.get('CUDA_VISIBLE_DEVICES', '-'))\n",
    "long.py": "import time\nprint('started', flush=True)\ntime.sleep(300)\n",
}


@dataclass
class Stack:
    """One `honcho start` of the clone's Procfile, with its own ports, home and Redis."""

    name: str
    home: Path
    workers: list[str]  #: the worker names expected online
    env: dict[str, str]
    flower_port: int
    proc: subprocess.Popen[bytes] | None = None
    watched: dict[int, str] = field(default_factory=dict)  #: pid -> what it is

    @property
    def url(self) -> str:
        return self.env["CELERY_AGENT_REDIS_URL"]

    @property
    def log(self) -> Path:
        return self.home.parent / f"{self.name}-honcho.log"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self) -> str:
        return f"{self.name}:\n{self.output()[-4000:]}"

    def start(self, clone: Path) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "honcho", "start"], cwd=clone, env=self.env, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def up(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.tail()
        return (self._online() >= set(self.workers) and _flower_ok(self.flower_port)
                and bool(list(self.home.glob("celerybeat-schedule*"))))  # fmt: skip

    def _online(self) -> set[str]:
        try:
            store = RunStore.from_url(self.url)
            rows = WorkerRegistry(store.r, store.keys).overview()
            store.r.close()
        except Exception:
            return set()
        return {r["name"] for r in rows if r["state"] == "online"}

    def watch(self) -> None:
        """Note the processes that must stay up: each Procfile line's command, and the workers
        and redis-server that `celery-agent workers` and `celery-agent redis` start."""
        assert self.proc is not None
        for line in psutil.Process(self.proc.pid).children():  # honcho's one per line
            for shell in line.children():
                commands = shell.children() if shell.name() in ("sh", "dash", "bash") else [shell]
                for command in commands:
                    self.watched[command.pid] = " ".join(command.cmdline())
                    if "celery-agent" in self.watched[command.pid]:
                        for child in command.children():  # workers, redis-server (not pools)
                            self.watched[child.pid] = " ".join(child.cmdline())

    def dead(self) -> list[str]:
        return [cmd for pid, cmd in self.watched.items() if not _running(pid)]

    def submit(self, experiment: Path, entry: str, queue: str, *, wait: bool) -> tuple[str, str]:
        """Submit through the CLI; returns (run id, output)."""
        argv = [str(BIN / "celery-agent"), "submit", entry, "--executor", "local", "--queue", queue]
        done = subprocess.run(argv + (["--wait"] if wait else []), cwd=experiment, env=self.env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        out = done.stdout + done.stderr
        assert done.returncode == 0, out + self.tail()
        found = re.search(r"submitted run ([0-9a-f-]{36})", out)
        assert found, out
        return found[1], out


def _flower_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=1) as r:
            return bool(r.read() == b"OK")
    except OSError:
        return False


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _clone(tmp_path: Path) -> Path:
    """A fresh clone of this repository, with this tree's Procfile (an uncommitted edit is what
    gets tested)."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{ROOT}", str(clone)],
                   check=True, timeout=120)  # fmt: skip
    shutil.copy(ROOT / "Procfile", clone / "Procfile")
    return clone


def _experiment(tmp_path: Path) -> Path:
    repo = tmp_path / "experiment"
    repo.mkdir()
    for name, text in EXPERIMENT.items():
        (repo / name).write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "experiment"]):
        subprocess.run([*git, *args], cwd=repo, check=True, timeout=60)
    return repo


def _stack(tmp_path: Path, name: str, workers: list[str], **extra: str) -> Stack:
    home = tmp_path / name / "home"
    home.mkdir(parents=True)
    redis_port, flower_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CELERY_AGENT_", "CELERY_BROKER", "CELERY_RESULT"))}  # fmt: skip
    env |= {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "REDIS_PORT": str(redis_port),
            "FLOWER_PORT": str(flower_port), "CELERY_AGENT_HOME": str(home),
            "CELERY_AGENT_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", **extra}  # fmt: skip
    return Stack(name, home, [*workers, f"services@{HOST}"], env, flower_port)


def _stop(stacks: list[Stack]) -> dict[str, list[psutil.Process]]:
    """SIGTERM each honcho; returns what was running under each just before."""
    family = {}
    for stack in stacks:
        if stack.proc is not None and stack.proc.poll() is None:
            family[stack.name] = psutil.Process(stack.proc.pid).children(recursive=True)
            stack.proc.send_signal(signal.SIGTERM)
    return family


def _kill_left(family: dict[str, list[psutil.Process]]) -> None:
    for procs in family.values():
        for proc in procs:
            if _running(proc.pid):
                proc.kill()


def test_honcho_start_brings_the_stack_up_here_and_sigterm_drains_it(tmp_path):
    clone, experiment = _clone(tmp_path), _experiment(tmp_path)
    here = [f"gpu{d.index}@{HOST}" for d in devices()] or [f"cpu@{HOST}"]
    plain = _stack(tmp_path, "plain", here)
    fake = _stack(tmp_path, "fake", [f"gpu0@{HOST}", f"gpu1@{HOST}"], CELERY_AGENT_FAKE_GPUS="2")
    stacks, family = [plain, fake], {}
    try:
        for stack in stacks:
            stack.start(clone)
        for stack in stacks:
            wait_for("the stack up", stack.up, 120, every=0.3, detail=stack.tail)
            stack.watch()
        observed_from = time.monotonic()

        # runs through each stack: on this machine's worker, and on GPU 1's own queue
        _, out = plain.submit(experiment, "hi.py", "default", wait=True)
        assert "hello from" in out
        _, out = fake.submit(experiment, "hi.py", "gpu1", wait=True)
        assert f"hello from {fake_uuid(1)}" in out, out
        long_id, _ = fake.submit(experiment, "long.py", "gpu0", wait=False)
        store = RunStore.from_url(fake.url)
        wait_for(
            "the long run running",
            lambda: store.get(long_id).get("state") == "running",
            60,
            every=0.3,
            detail=fake.tail,
        )
        store.r.close()

        # every process stays up (no line stopped, no worker started again)
        deadline = observed_from + WINDOW
        while time.monotonic() < deadline:
            for stack in stacks:
                assert not stack.dead(), (stack.dead(), stack.tail())
            time.sleep(0.5)
        for stack in stacks:
            assert " stopped (rc=" not in stack.output(), stack.tail()
            assert "starting it again" not in stack.output(), stack.tail()

        family = _stop(stacks)
        for stack in stacks:
            assert stack.proc is not None
            stack.proc.wait(60)
        wait_for(
            "every process of the stacks gone",
            lambda: not any(_running(p.pid) for ps in family.values() for p in ps),
            30,
            every=0.3,
            detail=lambda: [p.cmdline() for ps in family.values() for p in ps if _running(p.pid)],
        )
    finally:
        _kill_left(family or _stop(stacks))
        for stack in stacks:
            if stack.proc is not None and stack.proc.poll() is None:
                stack.proc.kill()
                stack.proc.wait()

    for stack in stacks:  # each worker was told to stop once and drained
        out = stack.output()
        for worker in stack.workers[:-1]:
            assert out.count(f"passing SIGTERM on to {worker}") == 1, stack.tail()
        assert "draining: runs get 0s to finish" in out, stack.tail()
    assert f"run {long_id} went back to queue gpu0" in fake.output(), fake.tail()

    # what the fake stack's Redis kept: the long run queued again, its message on queue gpu0
    with EmbeddedRedis(fake.home / "redis", port=free_port()) as server:
        store = RunStore.from_url(server.url)
        record = store.get(long_id)
        assert record["state"] == "queued", json.dumps(record, default=str)
        queued = [k for k in store.r.scan_iter("gpu0*") if store.r.type(k) == "list"]
        assert sum(store.r.llen(k) for k in queued) == 1, queued
        store.r.close()
