"""Log pump: one stream, ordered batches, line ends, long lines, sink failures, log file, tail."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest
from proc_support import ENV, Collect, run_py

from celery_agent.logpump import MAX_LINE
from celery_agent.runner import run_process


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
    with caplog.at_level(logging.WARNING, logger="celery_agent.logpump"):
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
    with caplog.at_level(logging.WARNING, logger="celery_agent.logpump"):
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
