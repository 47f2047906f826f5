"""Run the benchmarks and print one table: measured, baseline (same run), comparison, target.

    python -m benchmarks                  # all of them, full size (about 7-9 minutes on 2 cores)
    python -m benchmarks --quick          # small N: checks that each one runs (about a minute)
    python -m benchmarks --only dispatch  # one (repeat --only for several)
    python -m benchmarks --markdown       # the table as Markdown, with the machine and date

Exit status: 0 when every benchmark ran (a missed target is a FAIL row, not an error; add
``--strict`` to exit 1 on one), 2 when a benchmark could not run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from . import (
    bench_artifacts,
    bench_cancel,
    bench_checkpoints,
    bench_dispatch,
    bench_docker,
    bench_env,
    bench_faircost,
    bench_feedback,
    bench_first_run,
    bench_fleet,
    bench_heartbeat,
    bench_import,
    bench_inputs,
    bench_lock,
    bench_logs,
    bench_runs_page,
    bench_throughput,
)
from .context import Context
from .report import Row, error_row, markdown_table, text_table

Benchmark = Callable[[Context], list[Row]]

#: name -> benchmark, in the order a full run does them (the cold build last: it loads the CPUs)
BENCHMARKS: dict[str, Benchmark] = {
    "import": bench_import.run,
    "env_hit": bench_env.run_hit,
    "dispatch": bench_dispatch.run,
    "logs": bench_logs.run,
    "cancel": bench_cancel.run,
    "feedback": bench_feedback.run,
    "throughput": bench_throughput.run,
    "fair_cost": bench_faircost.run,
    "heartbeat": bench_heartbeat.run,
    "fleet": bench_fleet.run,
    "docker": bench_docker.run,
    "env_cold": bench_env.run_cold,
    "env_lock": bench_lock.run,
    "first_run": bench_first_run.run,
    "artifacts": bench_artifacts.run,
    "checkpoints": bench_checkpoints.run,
    "inputs": bench_inputs.run,
    "runs_page": bench_runs_page.run,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small N: check that each one runs")
    p.add_argument("--only", action="append", choices=list(BENCHMARKS), metavar="NAME",
                   help=f"run only NAME (repeatable): {', '.join(BENCHMARKS)}")  # fmt: skip
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, runs)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen benchmarks; print the table; return the exit status."""
    args = parse_args(argv)
    names = args.only or list(BENCHMARKS)
    signal.signal(signal.SIGTERM, _exit_on_term)
    root = Path(tempfile.mkdtemp(prefix="celery-agent-bench-"))
    started = time.monotonic()
    ctx = None
    try:
        ctx = Context.create(root, args.quick)
        rows, errors = run_all(ctx, names)
    finally:
        leftovers = ctx.cluster.close() if ctx is not None else []
        _remove(root, args.keep)
    for leftover in leftovers:
        print(f"killed a leftover process: {leftover}", file=sys.stderr)
    print(render(rows, args, time.monotonic() - started))
    return _status(rows, errors, args.strict)


def run_all(ctx: Context, names: Sequence[str]) -> tuple[list[Row], int]:
    """Each benchmark's rows; one ERROR row (and its traceback on stderr) per one that failed."""
    rows: list[Row] = []
    errors = 0
    for name in names:
        t0 = time.monotonic()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            rows += BENCHMARKS[name](ctx)
        except Exception as err:
            errors += 1
            traceback.print_exc()
            _print_worker_logs(ctx)
            rows.append(error_row(name, err))
        print(f"  {name}: {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
    return rows, errors


def render(rows: Sequence[Row], args: argparse.Namespace, seconds: float) -> str:
    """The table with a heading naming the mode, the machine and the date."""
    mode = "quick" if args.quick else "full"
    load = os.getloadavg()[0]
    head = f"celery-agent benchmarks ({mode}, {seconds:.0f}s) on {machine()}, {today()}"
    head += f"; load average {load:.2f} at the end"
    if args.markdown:
        return f"{head}\n\n{markdown_table(rows)}"
    return f"{head}\n{text_table(rows)}"


def machine() -> str:
    """CPU count, memory and CPU model of this machine."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPUs ({model}), {memory:.0f} GiB, Python {platform.python_version()}"


def today() -> str:
    """Today's date, ISO format."""
    return datetime.date.today().isoformat()


def _status(rows: Sequence[Row], errors: int, strict: bool) -> int:
    if errors:
        return 2
    return 1 if strict and any(row.ok is False for row in rows) else 0


def _print_worker_logs(ctx: Context) -> None:
    for worker in ctx.cluster.workers:
        print(f"--- {worker.queue} worker log (end) ---\n{worker.tail()}", file=sys.stderr)


def _remove(root: Path, keep: bool) -> None:
    if keep:
        print(f"scratch folder kept: {root}", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)


def _exit_on_term(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so the cleanup in main() runs."""
    raise SystemExit(128 + signum)
