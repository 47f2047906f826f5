"""`celery-agent status`: workers and GPUs as tables with bars, live with --watch, or as JSON;
`celery-agent health`: a worker's liveness as an exit code, for orchestrators' probes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .cli_quota import quota_table, quotas_in_force
from .quotas import KINDS
from .status import cluster_status
from .usage import GROUPS, current

SPARKS = " ▁▂▃▄▅▆▇█"
GIB = 2**30


@click.command()
@click.option("--watch", "-w", is_flag=True, help="refresh until Ctrl+C")
@click.option("--interval", "-n", default=2.0, show_default=True, help="seconds between refreshes")
@click.option("--json", "as_json", is_flag=True, help="print the data as JSON")
@click.option("--history", "worker", default=None, help="plot a worker's recent CPU/GPU/memory")
@click.option("--points", default=60, show_default=True, help="history points to plot")
@click.option("--user", "-u", default=None, help="only this user's runs in the users table")
@click.option("--project", default=None, help="only this project's runs in the users table")
@click.option("--by", type=click.Choice(GROUPS), default="user", show_default=True,
              help="group the runs waiting and running by user or by project")  # fmt: skip
def status(watch: bool, interval: float, as_json: bool, worker: str | None, points: int,
           user: str | None, project: str | None, by: str) -> int:  # fmt: skip
    """Show the workers (queues, state, current run, uptime), their GPUs, the runs waiting
    and running per user (or project), and each quota against what its user or project holds."""
    from .app import get_registry, get_store
    from .cli import console

    registry = get_registry()
    if worker is not None:
        data: Any = {"worker": worker, "history": registry.history(worker, points)}
        console.print_json(json.dumps(data)) if as_json else console.print(history_view(data))
        return 0

    def snapshot() -> dict[str, Any]:
        quotas = [row | {"kind": kind} for kind in KINDS for row in quotas_in_force().report(kind)]
        quotas = [q for q in quotas if user is None or q.get("user") == user]
        live = current(get_store(), by, user, project)
        return cluster_status(registry) | {by + "s": live, "quotas": quotas}

    if as_json:
        console.print_json(json.dumps(snapshot(), default=str))
        return 0
    if not watch:
        console.print(status_view(snapshot()))
        return 0
    return _watch(console, snapshot, interval)


#: exit codes of `celery-agent health`
HEALTH_ALIVE, HEALTH_STALE, HEALTH_NO_REDIS = 0, 1, 2


@click.command()
@click.option(
    "--worker",
    "-w",
    "name",
    required=True,
    help="the worker's full name, e.g. gpu0@%h (%h: this machine's hostname)",
)
@click.option("--redis-down-ok", is_flag=True,
              help="exit 0 when Redis cannot be read (a liveness probe: a Redis outage is no "
                   "reason to restart a worker and lose its run)")  # fmt: skip
def health(name: str, redis_down_ok: bool) -> int:
    """Exit 0 when the worker's heartbeat is current in Redis, 1 when it is not (stopped, lost or
    never started; the heartbeat lives three intervals), 2 when Redis cannot be read (0 with
    --redis-down-ok). Usable as a Kubernetes or Docker probe."""
    import socket

    from .app import get_registry
    from .cli import err_console

    name = name.replace("%h", socket.gethostname())
    try:
        alive = get_registry().is_alive(name)
    except Exception as exc:  # Redis down: said, and the probe decides what it means
        err_console.print(f"cannot read worker {name} from Redis: {exc}", markup=False)
        return HEALTH_ALIVE if redis_down_ok else HEALTH_NO_REDIS
    if not alive:
        err_console.print(
            f"worker {name} has no current heartbeat (stopped, lost or never started; "
            "`celery-agent status` lists the workers)",
            markup=False,
        )
        return HEALTH_STALE
    click.echo(f"worker {name} is alive")
    return HEALTH_ALIVE


def _watch(console: Console, snapshot: Callable[[], dict[str, Any]], interval: float) -> int:
    with Live(status_view(snapshot()), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(status_view(snapshot()), refresh=True)
        except KeyboardInterrupt:
            return 0


def status_view(data: dict[str, Any]) -> Group:
    """The workers table and the GPU table."""
    workers = Table("worker", "host", "queues", "state", "GPUs", "current run", "uptime", "cpu %",
                    "env cache", "artifacts", title="workers", title_justify="left")  # fmt: skip
    for w in data["workers"]:
        workers.add_row(escape(w["name"]), escape(w["host"] or ""), escape(",".join(w["queues"])),
                        _state(w["state"]), _gpus(w), escape(", ".join(r[:12] for r in w["runs"]) or "-"),
                        _duration(w["uptime"]), _num(w["cpu_percent"]),
                        env_cache_text(w.get("env_cache")), _store(w.get("artifact_store")))  # fmt: skip
    gpus = Table("host", "gpu", "name", "util", "memory", "temp", "power", "worker / lease",
                 title="GPUs", title_justify="left")  # fmt: skip
    for g in data["gpus"]:
        gpus.add_row(escape(g["host"]), f"{g['index']} {g['uuid'][:12]}", escape(g["name"] or ""),
                     bar(g["util"], 100), _memory(g), _num(g["temperature"], "°C"),
                     _num(g["power_w"], " W"), escape(_owner(g)))  # fmt: skip
    broken = [Text(f"{w['name']}: artifact store: {w['artifact_store']['error']}", style="red")
              for w in data["workers"] if (w.get("artifact_store") or {}).get("error")]  # fmt: skip
    parts: list[Table | Text] = [workers, *broken, *([gpus] if data["gpus"] else [])]
    for by in GROUPS:
        if data.get(by + "s"):
            parts.append(users_table(data[by + "s"], by))
    if data.get("quotas"):
        parts.append(quota_table(data["quotas"]))
    return Group(*parts)


def _store(check: dict[str, Any] | None) -> str:
    if not check:
        return "-"
    return "ok" if check.get("ok") else "[red]cannot write[/]"


def users_table(rows: list[dict[str, Any]], by: str = "user") -> Table:
    """Runs waiting and running now, per user (or project)."""
    table = Table(by, "waiting", "running", title=f"runs by {by}", title_justify="left")
    for row in rows:
        table.add_row(escape(str(row[by])), str(row["queued"]), str(row["active"]))
    return table


def env_cache_text(usage: dict[str, Any] | None) -> str:
    """'3 envs, 1.2/20.0 GiB, 1 in use': a worker's environment cache; '-' before it is measured."""
    if not usage:
        return "-"
    size = f"{usage['bytes'] / GIB:.1f}"
    size += f"/{usage['max_bytes'] / GIB:.1f} GiB" if usage.get("max_bytes") else " GiB"
    in_use = f", {usage['in_use']} in use" if usage.get("in_use") else ""
    return f"{usage['entries']} envs, {size}{in_use}"


def history_view(data: dict[str, Any]) -> Table:
    """Sparklines of a worker's recent CPU, memory, load and per-GPU use."""
    points = data["history"]
    table = Table("series", "last", f"recent ({len(points)} points)", box=None,
                  title=f"history of {escape(data['worker'])}", title_justify="left")  # fmt: skip
    if not points:
        table.add_row("(no history)", "", "")
        return table
    for label, key, top in (
        ("cpu %", "cpu", 100.0),
        ("memory %", "mem", 100.0),
        ("load", "load", None),
    ):
        values = [p.get(key) for p in points]
        table.add_row(label, _num(values[-1]), sparkline(values, top))
    for i, gpu in enumerate(points[-1].get("gpus") or []):
        util = [_gpu_at(p, i, "util") for p in points]
        mem = [_fraction(_gpu_at(p, i, "mem"), _gpu_at(p, i, "mem_total")) for p in points]
        table.add_row(f"gpu {gpu['uuid'][:12]} util %", _num(util[-1]), sparkline(util, 100.0))
        table.add_row(
            f"gpu {gpu['uuid'][:12]} mem",
            _num(mem[-1] and mem[-1] * 100, " %"),
            sparkline(mem, 1.0),
        )
    return table


def sparkline(values: list[float | None], top: float | None = None) -> str:
    """One character per value, ▁ (low) to █ (``top``, or the largest value); blank when unknown."""
    known = [v for v in values if v is not None]
    peak = top or (max(known) if known else 0) or 1.0
    out = []
    for v in values:
        level = 0 if v is None else 1 + min(7, int(max(0.0, v) / peak * 7.999))
        out.append(SPARKS[level])
    return "".join(out)


def bar(value: float | None, total: float | None, width: int = 16) -> str:
    """A text bar of value/total with its percentage; '-' when either is unknown."""
    if value is None or not total:
        return "-"
    frac = max(0.0, min(1.0, value / total))
    filled = round(frac * width)
    return f"{'█' * filled}{'░' * (width - filled)} {frac * 100:3.0f}%"


def _memory(g: dict[str, Any]) -> str:
    used, total = g["memory_used"], g["memory_total"]
    if used is None or not total:
        return "-" if not total else f"? / {total / GIB:.0f} GiB"
    return f"{bar(used, total)} {used / GIB:.1f}/{total / GIB:.0f} GiB"


def _gpu_at(point: dict[str, Any], i: int, key: str) -> Any:
    gpus = point.get("gpus") or []
    return gpus[i].get(key) if i < len(gpus) else None


def _fraction(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _owner(g: dict[str, Any]) -> str:
    text = ",".join(g["workers"]) or "-"
    return f"{text} / {g['lease'].split('/')[-1][:12]}" if g["lease"] else text


def _gpus(w: dict[str, Any]) -> str:
    mode = w.get("gpu_mode") or ""
    return f"{mode} {','.join(str(i) for i in w['gpus'])}".strip() if w["gpus"] else mode


def _state(state: str) -> str:
    return {"online": "[green]online[/]", "lost": "[red]lost[/]"}.get(state, escape(state))


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _num(value: float | None, unit: str = "") -> str:
    return (
        "-" if value is None else f"{value:.0f}{unit}" if abs(value) >= 10 else f"{value:.1f}{unit}"
    )
