"""The pool-process watchdog, with real processes: a parent killed with SIGKILL takes down what its
child process runs (group, grandchildren, a process that left the tree) and the child itself."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest
from proc_support import gone

from celery_agent import orphan
from celery_agent.testing import wait_for

#: a run: a grandchild in its group, one in its own session, one that left the tree (reparented)
RUN = textwrap.dedent(
    """\
    import os, subprocess, sys, time
    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
    same = subprocess.Popen(sleep)
    own = subprocess.Popen(sleep, start_new_session=True)
    hop = subprocess.run([sys.executable, "-c",
        "import subprocess, sys; print(subprocess.Popen(sys.argv[1:], start_new_session=True, "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid)", *sleep],
        capture_output=True, text=True)
    with open(sys.argv[1] + ".tmp", "w") as fh:
        fh.write(f"{same.pid} {own.pid} {int(hop.stdout)}")
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(120)
    """
)
#: a worker: notes itself, forks a pool process that watches it and starts the run
WORKER = textwrap.dedent(
    """\
    import json, os, signal, subprocess, sys, time
    from billiard.util import get_pdeathsig, set_pdeathsig
    from celery_agent import orphan
    out, run_id, run_code = sys.argv[1], sys.argv[2], sys.argv[3]
    orphan.remember_worker()
    main_watched = orphan.watch() is not None
    if os.fork() == 0:
        set_pdeathsig(signal.SIGKILL)  # as Celery does in each pool process
        dog = orphan.watch(interval=0.1)
        env = dict(os.environ, CELERY_AGENT_RUN_ID=run_id)
        run = subprocess.Popen([sys.executable, "-c", run_code, out + ".run"], env=env,
                               start_new_session=True)
        with open(out + ".tmp", "w") as fh:
            json.dump({"pool": os.getpid(), "run": run.pid, "pool_watched": dog is not None,
                       "main_watched": main_watched, "deathsig": get_pdeathsig()}, fh)
        os.rename(out + ".tmp", out)
        time.sleep(120)
        os._exit(0)
    time.sleep(120)
    """
)


def wait_file(path: Path, timeout: float = 20) -> str:
    wait_for(f"{path} to appear", path.exists, timeout)
    return path.read_text()


def test_a_killed_parent_takes_down_the_pool_process_and_every_process_of_its_run(
    tmp_path: Path,
):
    out, run_id = tmp_path / "pids.json", f"orphan-{uuid.uuid4().hex}"
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(out), run_id, RUN], start_new_session=True
    )
    pids: list[int] = []
    try:
        info = json.loads(wait_file(out))
        pids = [info["pool"], info["run"], *map(int, wait_file(Path(f"{out}.run")).split())]
        assert info["pool_watched"] and not info["main_watched"]
        assert info["deathsig"] == 0, "the pool process outlives its parent to stop the run"
        assert not any(gone(pid) for pid in pids)
        worker.send_signal(signal.SIGKILL)  # the parent only: the pool process lives on
        worker.wait()
        started = time.monotonic()
        wait_for(
            "every process of the run gone",
            lambda: all(gone(pid) for pid in pids),
            5,
            every=0.01,
            detail=lambda: [p for p in pids if not gone(p)],
        )
        assert time.monotonic() - started < 3
    finally:  # whatever failed, leave nothing of this test running
        for pid in pids + [p.pid for p in psutil.process_iter() if _run_of(p) == run_id]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def _run_of(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get("CELERY_AGENT_RUN_ID")
    except psutil.Error:
        return None


def test_the_watchdog_stays_quiet_while_the_parent_lives(monkeypatch: pytest.MonkeyPatch):
    exits: list[int] = []
    looks: list[int] = []
    real = os.getppid
    monkeypatch.setattr(orphan.os, "getppid", lambda: looks.append(1) or real())
    dog = orphan.Watchdog(real(), interval=0.02, exit=exits.append).start()

    def looked_ten_times() -> bool:  # ten looks at the parent, each finding it alive
        assert dog._thread.is_alive(), len(looks)
        return len(looks) >= 10

    wait_for("ten looks at the parent", looked_ten_times, 10, every=0.01)
    dog.stop()
    assert exits == [] and not dog.fired.is_set()


def test_no_watchdog_outside_a_pool_process(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(orphan, "_worker_pid", None)
    assert orphan.watch() is None  # not a worker at all
    orphan.remember_worker()
    assert orphan.watch() is None  # the worker's main process (a solo pool) watches nothing


def test_targets_of_a_process_without_children_are_empty():
    targets = orphan.Targets.find(os.getpid())
    assert os.getpid() not in targets.pids and os.getpgrp() not in targets.groups


def test_frozen_restores_the_switch_interval():
    before = sys.getswitchinterval()
    with orphan.frozen():
        assert sys.getswitchinterval() == pytest.approx(orphan._FREEZE)
    assert sys.getswitchinterval() == before
