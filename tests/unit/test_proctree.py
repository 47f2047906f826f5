"""Process trees: kill_tree stops a child, its group and descendants that left the group."""

from __future__ import annotations

import os
import sys
import time

import psutil
from proc_support import ENV, gone

from celery_agent.proctree import kill_tree
from celery_agent.testing import wait_for

SLEEPER = "import time; time.sleep(60)"

#: child that starts a sleeping grandchild (optionally in its own session) and prints its pid
SPAWN_GRANDCHILD = """
import subprocess, sys, time
gc = subprocess.Popen([sys.executable, "-c", {sleeper!r}], start_new_session={setsid})
print(gc.pid, flush=True)
time.sleep({then})
"""


# -- kill_tree ------------------------------------------------------------------------------------
def _spawn_with_grandchild(setsid: bool) -> tuple[psutil.Popen, int]:
    code = SPAWN_GRANDCHILD.format(sleeper=SLEEPER, setsid=setsid, then=60)
    child = psutil.Popen(
        [sys.executable, "-c", code], stdout=-1, env=ENV, start_new_session=True, text=True
    )
    assert child.stdout is not None
    return child, int(child.stdout.readline())


def test_kill_tree_kills_grandchild_that_left_the_group() -> None:
    child, grandchild = _spawn_with_grandchild(setsid=True)
    assert os.getpgid(grandchild) != child.pid
    kill_tree(child.pid, grace=0.5)
    assert child.wait(2) == -15
    wait_for("the grandchild gone", lambda: gone(grandchild), 2, every=0.01)
    child.stdout.close()


def test_kill_tree_without_grace_is_fast() -> None:
    child, grandchild = _spawn_with_grandchild(setsid=False)
    t0 = time.monotonic()
    kill_tree(child.pid, grace=0.0)
    elapsed = time.monotonic() - t0
    assert gone(child.pid) and gone(grandchild)
    assert elapsed < 0.5
    child.wait(2)
    child.stdout.close()


def test_kill_tree_of_a_finished_process_is_a_no_op() -> None:
    child = psutil.Popen([sys.executable, "-c", "pass"], env=ENV, start_new_session=True)
    child.wait(5)
    kill_tree(child.pid, grace=1.0)
    assert gone(child.pid)
