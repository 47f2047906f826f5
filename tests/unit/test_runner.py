"""Process supervision: exit mapping, timeout, abort, leftovers, usage."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from proc_support import ENV, Collect, gone, run_py

from celery_agent import runner
from celery_agent.errors import RunError
from celery_agent.runner import run_process
from celery_agent.testing import wait_for

SLEEPER = "import time; time.sleep(60)"

#: child that starts a sleeping grandchild (optionally in its own session) and prints its pid
SPAWN_GRANDCHILD = """
import subprocess, sys, time
gc = subprocess.Popen([sys.executable, "-c", {sleeper!r}], start_new_session={setsid})
print(gc.pid, flush=True)
time.sleep({then})
"""


# -- exit status --------------------------------------------------------------------------------
def test_exit_zero_is_succeeded() -> None:
    out = run_py("pass")
    assert (out.status, out.exit_code, out.reason) == ("succeeded", 0, "")
    assert out.duration > 0


def test_nonzero_exit_is_failed_with_its_code() -> None:
    out = run_py("raise SystemExit(3)")
    assert (out.status, out.exit_code, out.reason) == ("failed", 3, "exit code 3")


def test_on_start_receives_the_pid() -> None:
    started: list[int] = []
    out = run_py("pass", on_start=started.append)
    assert started == [out.pid]


def test_missing_executable_raises_run_error() -> None:
    with pytest.raises(RunError, match="no such executable") as info:
        run_process(["/nonexistent/python9"], env=ENV, cwd=Path.cwd(), sink=Collect())
    assert info.value.hint


def test_missing_working_directory_raises_run_error(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="does not exist") as info:
        run_process([sys.executable, "-V"], env=ENV, cwd=tmp_path / "nope", sink=Collect())
    assert info.value.hint


# -- timeout and abort ----------------------------------------------------------------------------
def _grandchild_pid(sink: Collect) -> int:
    return int(sink.lines[0])


def test_timeout_kills_child_and_grandchild() -> None:
    sink = Collect()
    code = SPAWN_GRANDCHILD.format(sleeper=SLEEPER, setsid=False, then=60)
    out = run_py(code, sink, timeout=0.5, grace=1.0)
    assert (out.status, out.reason) == ("timed_out", "timeout after 0.5s")
    assert 0.5 <= out.duration < 3.0
    assert out.exit_code == -15
    grandchild = _grandchild_pid(sink)
    wait_for(
        "the run and its grandchild gone", lambda: gone(out.pid) and gone(grandchild), 2, every=0.01
    )


def test_should_abort_stops_the_run_quickly() -> None:
    t0 = time.monotonic()
    out = run_py(SLEEPER, should_abort=lambda: time.monotonic() - t0 > 0.3, grace=0.0)
    assert (out.status, out.reason) == ("aborted", "cancelled")
    assert time.monotonic() - t0 < 1.3


def test_abort_event_is_reacted_to_at_once() -> None:
    event = threading.Event()
    timer = threading.Timer(0.3, event.set)
    timer.start()
    t0 = time.monotonic()
    out = run_py(SLEEPER, abort_event=event, poll_interval=10.0, grace=0.0)
    assert out.status == "aborted"
    assert time.monotonic() - t0 < 1.3


def test_raising_abort_check_counts_as_not_aborted() -> None:
    def broken() -> bool:
        raise RuntimeError("redis away")

    out = run_py("import time; time.sleep(0.2)", should_abort=broken)
    assert out.status == "succeeded"


def test_child_ignoring_term_is_killed_after_grace() -> None:
    sink = Collect()
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(60)"
    marks: list[float] = []

    def ready() -> bool:
        if sink.lines and not marks:
            marks.append(time.monotonic())
        return bool(marks)

    out = run_py(code, sink, should_abort=ready, grace=0.5)
    stopped_after = time.monotonic() - marks[0]
    assert out.status == "aborted"
    assert out.exit_code == -9
    assert 0.5 <= stopped_after < 2.0


# -- leftovers -----------------------------------------------------------------------------------
def test_background_grandchild_is_stopped_after_child_exits() -> None:
    sink = Collect()
    code = SPAWN_GRANDCHILD.format(sleeper=SLEEPER, setsid=False, then=0)
    t0 = time.monotonic()
    out = run_py(code, sink, grace=5.0)
    assert out.status == "succeeded"
    assert time.monotonic() - t0 < 2.0
    assert gone(_grandchild_pid(sink))


def test_seen_grandchild_that_left_the_group_is_stopped_after_child_exits() -> None:
    sink = Collect()
    code = SPAWN_GRANDCHILD.format(sleeper=SLEEPER, setsid=True, then=0.3)
    out = run_py(code, sink, sample_interval=0.05)
    assert out.status == "succeeded"
    assert gone(_grandchild_pid(sink))


def test_pipe_held_by_escaped_process_does_not_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "_PIPE_DRAIN", 0.3)
    sink = Collect()
    code = SPAWN_GRANDCHILD.format(sleeper="import time; time.sleep(3)", setsid=True, then=0)
    t0 = time.monotonic()
    out = run_py(code, sink, sample_interval=60.0)
    try:
        assert out.status == "succeeded"
        assert time.monotonic() - t0 < 1.5
    finally:
        psutil.Process(_grandchild_pid(sink)).kill()


# -- usage ----------------------------------------------------------------------------------------
def test_busy_child_reports_cpu_time() -> None:
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5: pass"
    out = run_py(code)
    assert out.usage.cpu_seconds is not None and out.usage.cpu_seconds > 0.4
    assert out.usage.samples >= 1


def test_memory_is_sampled_while_running() -> None:
    out = run_py("import time; b = bytearray(50_000_000); time.sleep(0.4)", sample_interval=0.05)
    assert out.usage.max_rss_bytes is not None and out.usage.max_rss_bytes > 50_000_000
    assert out.usage.samples >= 3


# -- one poll over exit and output ----------------------------------------------------------------
@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "waitid-thread"])
def test_output_is_pumped_and_the_exit_seen_without_pidfd_too(pidfd: bool, monkeypatch) -> None:
    if not pidfd:  # an older kernel: the exit comes through a pipe a waitid thread writes to
        monkeypatch.setattr(runner.os, "pidfd_open", lambda pid: (_ for _ in ()).throw(OSError()))
    sink, last = Collect(), Collect()
    code = "import sys, time\nprint('a', flush=True)\ntime.sleep(0.3)\nsys.stdout.write('b')"
    started = time.monotonic()
    out = run_py(code, sink, sink_last=last, poll_interval=5.0)
    assert out.status == "succeeded" and time.monotonic() - started < 3, "the exit woke it"
    assert sink.lines == ["a"], "a line after a quiet spell went out while the run ran"
    assert last.lines == ["b"], "the line still open at the exit went to the last sink"
    assert out.lines == 2 and out.tail == ["a", "b"]
