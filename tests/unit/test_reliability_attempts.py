"""Claim holder tokens, and a run's process dying with the process that supervises it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
from proc_support import gone

from celery_agent.attempts import holder_dead, holder_token
from celery_agent.testing import wait_for

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
        wait_for("the child's pid", lambda: pid_file.exists() and pid_file.read_text(), 20)
        child = int(pid_file.read_text())
        assert psutil.pid_exists(child)
        os.kill(sup.pid, signal.SIGKILL)
        sup.wait()
        wait_for("the run process gone", lambda: gone(child), 5, every=0.02)
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait()
