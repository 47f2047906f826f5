"""Process supervision: exit mapping, log pump, timeout, abort, kill, leftovers, usage."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from celery_agent import runner
from celery_agent.errors import RunError
from celery_agent.runner import MAX_LINE, ProcessOutcome, kill_tree, run_process

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}

SLEEPER = "import time; time.sleep(60)"

#: child that starts a sleeping grandchild (optionally in its own session) and prints its pid
SPAWN_GRANDCHILD = """
import subprocess, sys, time
gc = subprocess.Popen([sys.executable, "-c", {sleeper!r}], start_new_session={setsid})
print(gc.pid, flush=True)
time.sleep({then})
"""


class Collect:
    """A sink that records each batch it receives."""

    def __init__(self, fail_first: int = 0) -> None:
        self.batches: list[list[str]] = []
        self.fail_left = fail_first
        self.calls = 0

    def __call__(self, lines: list[str]) -> None:
        self.calls += 1
        if self.fail_left > 0:
            self.fail_left -= 1
            raise ConnectionError("redis away")
        self.batches.append(list(lines))

    @property
    def lines(self) -> list[str]:
        return [line for batch in self.batches for line in batch]


def run_py(code: str, sink: Collect | None = None, **kwargs: object) -> ProcessOutcome:
    """Run a Python snippet under run_process with fast polling."""
    kwargs.setdefault("poll_interval", 0.02)
    kwargs.setdefault("batch_interval", 0.02)
    return run_process(
        [sys.executable, "-c", code],
        env=ENV,
        cwd=Path.cwd(),
        sink=sink if sink is not None else Collect(),
        **kwargs,  # type: ignore[arg-type]
    )


def gone(pid: int, within: float = 2.0) -> bool:
    """True when ``pid`` has ended (a zombie counts as ended) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def no_leftover_children() -> Iterator[None]:
    """Fail any test that leaves a child process of the test process behind."""
    yield
    me = psutil.Process()
    deadline = time.monotonic() + 2.0
    while (kids := me.children(recursive=True)) and time.monotonic() < deadline:
        time.sleep(0.02)
    for kid in kids:
        kid.kill()
    assert not kids, f"leftover child processes: {kids}"


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


# -- log pump -----------------------------------------------------------------------------------
def test_stdout_and_stderr_share_one_stream() -> None:
    sink = Collect()
    code = "import sys\nprint('out', flush=True)\nprint('err', file=sys.stderr, flush=True)\nprint('end')"
    out = run_py(code, sink)
    assert sink.lines == ["out", "err", "end"]
    assert out.lines == 3


def test_lines_arrive_in_ordered_complete_batches() -> None:
    sink = Collect()
    out = run_py("for i in range(10000): print(i)", sink, batch_lines=1000)
    assert sink.lines == [str(i) for i in range(10000)]
    assert out.lines == 10000
    assert len(sink.batches) <= 30
    assert max(len(b) for b in sink.batches) <= 1000


def test_partial_last_line_is_delivered() -> None:
    sink = Collect()
    run_py("import sys; sys.stdout.write('a\\nb')", sink)
    assert sink.lines == ["a", "b"]


def test_crlf_and_carriage_return_end_lines() -> None:
    sink = Collect()
    run_py("import sys; sys.stdout.write('a\\r\\nb\\r\\n10%\\r20%\\n')", sink)
    assert sink.lines == ["a", "b", "10%", "20%"]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    sink = Collect()
    out = run_py("import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe end\\n')", sink)
    assert out.status == "succeeded"
    assert sink.lines == ["ok \ufffd\ufffd end"]


def test_very_long_line_is_split_into_pieces() -> None:
    sink = Collect()
    run_py(f"print('x' * {3 * MAX_LINE + 5})", sink)
    assert [len(line) for line in sink.lines] == [MAX_LINE, MAX_LINE, MAX_LINE, 5]


def test_sink_failures_lose_no_lines(caplog: pytest.LogCaptureFixture) -> None:
    sink = Collect(fail_first=3)
    code = "import time\nfor i in range(30):\n    print(i, flush=True)\n    time.sleep(0.01)"
    with caplog.at_level(logging.WARNING, logger="celery_agent.runner"):
        out = run_py(code, sink, batch_interval=0.02)
    assert sink.calls > 3
    assert sink.lines == [str(i) for i in range(30)]
    assert out.status == "succeeded"
    assert sum("log sink failed" in r.message for r in caplog.records) == 1


def test_sink_that_never_recovers_leaves_lines_in_log_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = Collect(fail_first=10**9)
    log = tmp_path / "run.log"
    with caplog.at_level(logging.WARNING, logger="celery_agent.runner"):
        out = run_py("for i in range(5): print(i)", sink, log_file=log)
    assert out.status == "succeeded"
    assert log.read_text().splitlines() == ["0", "1", "2", "3", "4"]
    assert any("5 log lines were not delivered" in r.message for r in caplog.records)


def test_log_file_holds_every_line(tmp_path: Path) -> None:
    sink = Collect()
    log = tmp_path / "logs" / "run.log"
    run_py("for i in range(2500): print('line', i)", sink, log_file=log)
    assert log.read_text().splitlines() == sink.lines
    assert len(sink.lines) == 2500


def test_tail_keeps_the_last_lines() -> None:
    out = run_py("for i in range(100): print(i)", tail_lines=3)
    assert out.tail == ["97", "98", "99"]


def test_first_line_time_is_recorded() -> None:
    before = time.time()
    out = run_py("print('hello')")
    assert out.first_line_at is not None
    assert before <= out.first_line_at <= time.time()


def test_no_output_leaves_first_line_time_unset() -> None:
    out = run_py("pass")
    assert (out.first_line_at, out.lines, out.tail) == (None, 0, [])


def test_many_short_lines_are_all_counted() -> None:
    counted = [0, 0]

    def count(lines: list[str]) -> None:
        counted[0] += len(lines)
        counted[1] += 1

    run_process(
        [
            sys.executable,
            "-c",
            "import sys\nsys.stdout.writelines('%d\\n' % i for i in range(200000))",
        ],
        env=ENV,
        cwd=Path.cwd(),
        sink=count,
        poll_interval=0.02,
    )
    assert counted[0] == 200000
    assert counted[1] < 2000


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
    assert gone(out.pid) and gone(_grandchild_pid(sink))


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
    assert gone(grandchild)
    child.stdout.close()


def test_kill_tree_without_grace_is_fast() -> None:
    child, grandchild = _spawn_with_grandchild(setsid=False)
    t0 = time.monotonic()
    kill_tree(child.pid, grace=0.0)
    elapsed = time.monotonic() - t0
    assert gone(child.pid, within=0) and gone(grandchild, within=0)
    assert elapsed < 0.5
    child.wait(2)
    child.stdout.close()


def test_kill_tree_of_a_finished_process_is_a_no_op() -> None:
    child = psutil.Popen([sys.executable, "-c", "pass"], env=ENV, start_new_session=True)
    child.wait(5)
    kill_tree(child.pid, grace=1.0)
    assert gone(child.pid, within=0)


# -- leftovers -----------------------------------------------------------------------------------
def test_background_grandchild_is_stopped_after_child_exits() -> None:
    sink = Collect()
    code = SPAWN_GRANDCHILD.format(sleeper=SLEEPER, setsid=False, then=0)
    t0 = time.monotonic()
    out = run_py(code, sink, grace=5.0)
    assert out.status == "succeeded"
    assert time.monotonic() - t0 < 2.0
    assert gone(_grandchild_pid(sink), within=0)


def test_seen_grandchild_that_left_the_group_is_stopped_after_child_exits() -> None:
    sink = Collect()
    code = SPAWN_GRANDCHILD.format(sleeper=SLEEPER, setsid=True, then=0.3)
    out = run_py(code, sink, sample_interval=0.05)
    assert out.status == "succeeded"
    assert gone(_grandchild_pid(sink), within=0)


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
