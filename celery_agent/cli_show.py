"""`celery-agent show`: one run's record as a table (every value escaped: a value like
``optuna-integration[pytorch_ignite]`` prints whole), or as JSON."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from .cli_artifacts import artifacts_line, checkpoints_line, resumed_line
from .serving import QueueCover
from .state import QUEUED

SHOWN_FILES = 20  #: artifact files listed by `show` (`celery-agent artifacts RUN` lists all)


@click.command()
@click.argument("run")
@click.option("--json", "as_json", is_flag=True, help="print the whole record as JSON")
def show(run: str, as_json: bool) -> int:
    """Show a run's record (RUN: its id, an id prefix or its name): state, spec, outcome."""
    from .app import get_registry, get_store
    from .cli import console
    from .handle import get_run
    from .serving import queue_cover

    record = get_run(run).info()
    if as_json:
        console.print_json(json.dumps(record, default=str))
        return 0
    cover = None
    if record.get("state") == QUEUED:
        cover = queue_cover(get_registry(), str(record.get("queue") or ""))
    table = record_table(record, cover, time.time())
    _metric_rows(table, record["run_id"], get_store())
    console.print(table)
    return 0


def record_table(record: dict[str, Any], cover: QueueCover | None, now: float) -> Table:
    """The rows of a run's record that people read, values escaped."""
    table = Table(show_header=False, box=None)

    def row(key: str, value: Any) -> None:
        table.add_row(escape(key), escape(str(value)))

    for key in ("run_id", "name", "user", "project", "rerun_of", "state", "queue", "worker",
                "attempt", "commit", "exit_code", "error", "output_dir", "env_source",
                "env_index"):  # fmt: skip
        if record.get(key) not in (None, ""):
            row(key, record[key])
    if isinstance(record.get("torch_index"), dict):
        picked = record["torch_index"]
        row("torch index", f"{picked.get('variant')} ({picked.get('url')}), picked for the worker")
    if record.get("env_key"):
        hit = str(record.get("env_hit")) in ("1", "True", "true")  # (as stored: "1" or "0")
        row("env", f"{record['env_key']} ({'reused' if hit else 'built'})")
    for key in ("entry", "workdir"):
        if (record.get("spec") or {}).get(key):
            row(key, record["spec"][key])
    if record.get("state") == QUEUED and record.get("submitted_at"):
        waited = f"{now - float(record['submitted_at']):.0f}s in the queue"
        row("waiting", f"{record['waiting']}, {waited}" if record.get("waiting") else waited)
    if cover is not None:
        row("workers", ", ".join(cover.workers) if cover.covered else cover.problem())
    for key in ("submitted_at", "preparing_at", "running_at", f"{record.get('state')}_at"):
        if record.get(key):
            row(key, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record[key])))
    for key in ("timings", "params", "usage", "gpus"):
        if record.get(key):
            row(key, json.dumps(record[key]))
    if record.get("unused_params"):
        unused = ", ".join(record["unused_params"])
        row("unused params", f"{unused} (no parser read them, see the log)")
    if (record.get("usage") or {}).get("gpu_memory_peak_bytes") is not None:
        row("gpu memory", gpu_memory_line(record["usage"]))
    if record.get("artifacts"):
        row("artifacts", artifacts_line(record["artifacts"]))
        for entry in (record["artifacts"].get("files") or [])[:SHOWN_FILES]:
            row("", f"{entry['path']} ({entry['size']} bytes)")
    for name, url in ((record.get("spec") or {}).get("inputs") or {}).items():
        got = (record.get("inputs") or {}).get(name)
        how = (
            "" if got is None else " (cached)" if got.get("cached") else f" ({got['bytes']} bytes)"
        )
        row(f"input {name}", f"{url}{how}")
    if record.get("resumed"):
        row("resumed", resumed_line(record["resumed"]))
    if record.get("checkpoints"):
        row("checkpoints", checkpoints_line(record["checkpoints"], now))
    if record.get("freeze"):
        row("packages", f"{len(record['freeze'])} pinned (see --json)")
    return table


def _metric_rows(table: Table, run_id: str, store: Any) -> None:
    """The last value of each metric the run reported."""
    from .metrics import last_values

    for name, last in last_values(store, run_id).items():
        step = "" if last["step"] is None else f" (step {last['step']})"
        table.add_row(escape(f"metric {name}"), f"{last['value']:.6g}{step}")


def gpu_memory_line(usage: dict[str, Any]) -> str:
    """'peak 1.50 GiB, mean 1.20 GiB (12 samples)' from a run's usage summary."""
    gib = 2**30
    return (
        f"peak {usage['gpu_memory_peak_bytes'] / gib:.2f} GiB, "
        f"mean {usage.get('gpu_memory_mean_bytes', 0) / gib:.2f} GiB "
        f"({usage.get('gpu_samples', 0)} samples)"
    )
