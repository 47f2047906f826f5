"""Claim holder tokens, and a run's process dying with the process that supervises it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from celery_agent.attempts import holder_dead, holder_token

SUPERVISOR = textwrap.dedent(
    """\
    import sys
    from pathlib import Path
    from celery_agent.runner import run_process
    pid_file = Path(sys.argv[1])
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    run_process([sys.executable, "-c", code], env={}, cwd=pid_file.parent, sink=lambda lines: None)
    """
)


def test_a_token_of_a_live_process_is_not_dead():
    assert not holder_dead(holder_token("w@h"))


def test_a_token_of_a_gone_process_on_this_machine_is_dead():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert holder_dead(f"w@h|{socket.gethostname()}|{proc.pid}")


def test_tokens_of_other_machines_or_old_claims_are_never_dead():
    assert not holder_dead("w@h|some-other-host|1")
    assert not holder_dead("w@h")
    assert not holder_dead("w@h|x|notapid")


def test_the_run_process_dies_when_its_supervisor_is_killed(tmp_path: Path):
    pid_file = tmp_path / "child.pid"
    sup = subprocess.Popen([sys.executable, "-c", SUPERVISOR, str(pid_file)])
    try:
        deadline = time.monotonic() + 20
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert psutil.pid_exists(child)
        os.kill(sup.pid, signal.SIGKILL)
        sup.wait()
        deadline = time.monotonic() + 5
        while psutil.pid_exists(child) and time.monotonic() < deadline:
            try:
                if psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)
        assert not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie"
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
