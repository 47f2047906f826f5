"""Metric lines: format, parse, and the tap that passes lines on to the log sink."""

from __future__ import annotations

import json

import pytest

from celery_agent import metrics
from celery_agent.metrics import Metric, format_line, parse_line


def test_format_line_round_trips_through_parse_line():
    line = format_line("val_acc", 0.93, step=3)
    assert line.startswith("@@celery-agent:metric ")
    assert parse_line(line) == Metric("val_acc", 0.93, 3)


def test_step_is_optional_and_may_be_null():
    assert parse_line(format_line("loss", 1)) == Metric("loss", 1.0, None)
    assert parse_line('@@celery-agent:metric {"name": "loss", "value": 2, "step": null}') == Metric("loss", 2.0, None)  # fmt: skip


@pytest.mark.parametrize(
    "line",
    [
        "plain output",
        "@@celery-agent:metric not json",
        '@@celery-agent:metric {"value": 1}',
        '@@celery-agent:metric {"name": "x", "value": "high"}',
        '@@celery-agent:metric {"name": "x", "value": true}',
        '@@celery-agent:metric {"name": "x", "value": 1, "step": 1.5}',
        '@@celery-agent:metric ["x", 1]',
        ' @@celery-agent:metric {"name": "x", "value": 1}',
    ],
)
def test_other_and_malformed_lines_are_not_metrics(line):
    assert parse_line(line) is None


def test_report_writes_the_documented_line(capsys):
    metrics.report("loss", 0.5, step=7)
    out = capsys.readouterr().out
    assert out.endswith("\n")
    assert json.loads(out.removeprefix(metrics.PREFIX)) == {"name": "loss", "value": 0.5, "step": 7}


class _Refusing:
    """A log sink that refuses its first batch, like a Redis blip."""

    def __init__(self):
        self.calls, self.got = 0, []

    def __call__(self, lines):
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("down")
        self.got.extend(lines)


class _NoStore:
    """Stands in for a store whose Redis refuses everything."""

    class keys:
        @staticmethod
        def metrics(run_id):
            return f"ca:run:{run_id}:metrics"

    class r:
        @staticmethod
        def pipeline(transaction=False):
            raise ConnectionError("redis down")


def test_tap_raises_what_the_log_sink_raises_and_parses_the_batch_only_once_delivered():
    sink = _Refusing()
    tap = metrics.tap(sink, _NoStore(), "r1")
    batch = ["hello", format_line("loss", 1.0, 0)]
    with pytest.raises(ConnectionError):
        tap(batch)
    assert tap.pending == []
    tap(batch)
    assert sink.got == batch
    assert tap.pending == [Metric("loss", 1.0, 0)], "Redis refused the metric: it is kept for later"
