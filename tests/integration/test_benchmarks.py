"""The benchmark entry point runs end to end in --quick mode and prints its table."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.integration

ROWS = (
    "env cache hit",
    "dispatch p50",
    "log volume",
    "log latency",
    "cancel",
    "feedback: submit -> 'no worker serves'",
    "feedback: cancel in source stage",
    "throughput",
    "fair order: ",
    "  record a run: gate riding on it",
    "  claim a delivery: gate riding on it",
    "heartbeat: worker main process CPU",
    "fleet: heartbeats, Redis CPU",
    "fleet: heartbeats + runs, Redis CPU",
    "fleet: Redis memory per worker",
    "fleet: Redis CPU per exporter scrape",
    "docker",
    "cold env",
    "uv.lock cold env",
    "artifacts: run end",
    "artifacts: upload",
    "checkpoints: log latency",
    "checkpoints: largest heartbeat gap",
    "inputs: run start",
    "inputs: fetch",
    "runs page, 1,000 runs: first page",
    "runs page, 1,000 runs: tag filter",
)


def run_quick(timeout: float = 300) -> tuple[int, str, str]:
    """``python -m benchmarks --quick``; on timeout it gets SIGTERM, so it stops what it started."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "--quick"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        pytest.fail(f"--quick ran past {timeout}s:\n{out[-3000:]}\n{err[-5000:]}")
    return proc.returncode, out, err


def test_quick_benchmarks_run_and_print_the_table():
    code, out, err = run_quick()
    assert code == 0, out[-3000:] + err[-5000:]
    lines = out.splitlines()
    assert lines[0].startswith("celery-agent benchmarks (quick")
    assert lines[1].split()[:3] == ["benchmark", "measured", "baseline"]
    for name in ROWS:
        assert any(line.startswith(name) for line in lines), name
    assert "ERROR" not in out
    assert "leftover" not in err
