"""`celery-agent workers`' supervisor with real child processes: restarts with backoff, stop
signals passed on exactly once, children that never outlive it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from celery_agent.supervisor import Child, Supervisor, backoff
from celery_agent.testing import wait_for

# A stand-in worker: notes its start and each SIGTERM in its file, exits 0.3 s after the first
# SIGTERM (time enough for a duplicate to arrive and be noted), or with code 3 when told to fail.
WORKER = textwrap.dedent("""
    import os, signal, sys, time
    note = open(sys.argv[1], "a", buffering=1)
    if sys.argv[2] == "fail":
        sys.exit(3)
    stop_at = []
    def on_term(*_):
        note.write("TERM\\n")
        stop_at.append(time.monotonic() + 0.3)
    signal.signal(signal.SIGTERM, on_term)
    note.write(f"up {os.getpid()}\\n")
    while not stop_at or time.monotonic() < stop_at[0]:
        time.sleep(0.02)
""")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def worker(tmp_path: Path) -> Callable[[str, str], list[str]]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    return lambda note, how="run": [sys.executable, str(script), str(tmp_path / note), how]


def test_backoff_doubles_from_one_second_up_to_a_minute():
    assert [backoff(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_a_worker_that_dies_young_is_started_again_later_each_time(worker, tmp_path):
    clock = Clock()
    child = Child("w@%h", worker("w", "fail"))
    sup = Supervisor([child], clock=clock)
    sup.start(child)
    for failures, delay in ((1, 1.0), (2, 2.0), (3, 4.0)):
        assert child.proc is not None and child.proc.wait(20) == 3
        clock.now += 0.5
        sup.step()
        assert (child.proc, child.failures, child.restart_at) == (None, failures, clock.now + delay)
        clock.now += delay - 0.01
        sup.step()
        assert child.proc is None  # not yet
        clock.now += 0.01
        sup.step()
        assert child.proc is not None  # started again
    child.proc.wait(20)


def test_a_worker_that_ran_a_while_starts_its_backoff_over(worker):
    clock = Clock()
    child = Child("w@%h", worker("w", "fail"), failures=5)
    sup = Supervisor([child], clock=clock)
    sup.start(child)
    assert child.proc is not None and child.proc.wait(20) == 3
    clock.now += 61
    sup.step()
    assert child.failures == 1 and child.restart_at == clock.now + 1


def test_nothing_is_started_again_once_a_stop_signal_came(worker, tmp_path):
    clock = Clock()
    child = Child("w@%h", worker("w", "fail"))
    sup = Supervisor([child], clock=clock)
    sup.start(child)
    assert child.proc is not None and child.proc.wait(20) == 3
    sup.signals.append(signal.SIGTERM)
    clock.now += 100
    sup.step()
    assert child.done and child.proc is None


def _supervisor(tmp_path: Path, argvs: list[list[str]]) -> subprocess.Popen[bytes]:
    """A supervisor process of its own (in its own group, as honcho starts one)."""
    code = (
        "import json, logging, sys\n"
        "from celery_agent.supervisor import supervise\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "sys.exit(supervise([(f'w{i}@%h', a) for i, a in enumerate(json.loads(sys.argv[1]))]))\n"
    )
    with (tmp_path / "supervisor.log").open("wb") as log:
        return subprocess.Popen([sys.executable, "-c", code, json.dumps(argvs)], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def test_sigterm_to_the_group_reaches_each_worker_once_and_all_stop(worker, tmp_path):
    sup = _supervisor(tmp_path, [worker("a"), worker("b")])
    wait_for("both workers up", lambda: lines(tmp_path / "a") and lines(tmp_path / "b"), 20)
    os.killpg(sup.pid, signal.SIGTERM)  # what honcho does
    assert sup.wait(20) == 0, (tmp_path / "supervisor.log").read_text()
    assert lines(tmp_path / "a")[1:] == ["TERM"] and lines(tmp_path / "b")[1:] == ["TERM"]
    log = (tmp_path / "supervisor.log").read_text()
    assert "passing SIGTERM on to w0@" in log and "every worker has stopped" in log


def test_a_killed_worker_is_started_again_under_a_live_supervisor(worker, tmp_path):
    sup = _supervisor(tmp_path, [worker("a")])
    wait_for("worker a up", lambda: lines(tmp_path / "a"), 20)
    first = int(lines(tmp_path / "a")[0].split()[1])
    os.kill(first, signal.SIGKILL)
    wait_for("worker a started again", lambda: len(lines(tmp_path / "a")) == 2, 20)
    second = int(lines(tmp_path / "a")[1].split()[1])
    assert second != first and psutil.Process(second).ppid() == sup.pid
    os.kill(sup.pid, signal.SIGINT)
    assert sup.wait(20) == 0
    assert "was killed by SIGKILL after" in (tmp_path / "supervisor.log").read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the death signal is Linux's")
def test_workers_get_sigterm_when_the_supervisor_is_killed(worker, tmp_path):
    sup = _supervisor(tmp_path, [worker("a")])
    wait_for("worker a up", lambda: lines(tmp_path / "a"), 20)
    pid = int(lines(tmp_path / "a")[0].split()[1])
    sup.kill()
    sup.wait(20)
    wait_for(
        "worker a gone",
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
        20,
    )
    assert lines(tmp_path / "a")[1:] == ["TERM"]
