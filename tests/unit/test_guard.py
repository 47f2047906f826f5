"""The run guard: a process's runs (their whole process groups) die with it, even by kill -9."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
from proc_support import gone

from celery_agent.guard import Guard
from celery_agent.testing import wait_for

# A stand-in for a pool process: starts runs (each a group of two sleepers, as a run with a child
# of its own), hands the groups listed in argv to its guard, waits until each run says its child
# is started, says the pids, then waits to be killed.
OWNER = """
import json, subprocess, sys, time
from celery_agent.guard import guard
RUN = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; "
       "time.sleep(60)']); print('started', flush=True); time.sleep(60)")
runs = []
for _ in range(2):
    p = subprocess.Popen([sys.executable, "-c", RUN], start_new_session=True,
                         stdout=subprocess.PIPE, text=True)
    runs.append(p)
    guard().add(p.pid)
for p in runs[int(sys.argv[1]):]:
    guard().remove(p.pid)
for p in runs:
    assert p.stdout.readline() == "started\\n"
print(json.dumps([p.pid for p in runs]), flush=True)
time.sleep(60)
"""


def start_owner(released: int) -> tuple[subprocess.Popen[str], list[int]]:
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root}
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(released)], stdout=subprocess.PIPE,
                             text=True, env=env)  # fmt: skip
    assert owner.stdout is not None
    return owner, json.loads(owner.stdout.readline())


def group(pgid: int) -> list[psutil.Process]:
    return [p for p in psutil.process_iter() if _pgid(p.pid) == pgid and _running(p)]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_kill_9_of_the_owner_kills_every_guarded_group_and_only_those() -> None:
    owner, (guarded, released) = start_owner(released=1)
    try:
        assert len(group(guarded)) == 2 and len(group(released)) == 2
        owner.kill()
        owner.wait()
        wait_for("the run and its child to die with their owner", lambda: group(guarded) == [], 3)
        assert len(group(released)) == 2, "a group taken off the guard is left alone"
    finally:
        for pgid in (guarded, released):
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)


def test_a_guard_that_died_is_started_again_with_every_group_held(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                               start_new_session=True)  # fmt: skip
    keeper = Guard()
    try:
        keeper.add(sleeper.pid)
        first = keeper._proc
        assert first is not None
        first.kill()
        first.wait()
        other = subprocess.Popen(["sleep", "60"], start_new_session=True)
        keeper.add(other.pid)  # starts a new guard, told both groups
        second = keeper._proc
        assert second is not None and second.pid != first.pid
        assert second.stdin is not None
        second.stdin.close()  # as if this process died: the guard kills what it holds
        wait_for(
            "both held groups killed", lambda: gone(sleeper.pid) and gone(other.pid), 3, every=0.01
        )
        second.wait(3)
    finally:
        for proc in (sleeper,):
            proc.kill()
        other.kill()
