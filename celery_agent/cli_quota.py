"""`celery-agent quota`: set, list and remove the quotas the fleet enforces (kept in Redis)."""

from __future__ import annotations

import json

import click
from rich.markup import escape
from rich.table import Table

from .errors import ConfigError
from .quotas import KINDS, Quotas, scope
from .users import check_name


def quotas_in_force() -> Quotas:
    """The quotas of this process's store and settings."""
    from .app import get_settings, get_store
    from .quotas import parse_settings

    return Quotas(get_store(), parse_settings(get_settings().quotas))


def _scope(name: str, project: bool, queue: str | None) -> str:
    try:
        check_name(name, "project" if project else "user")
    except ValueError as exc:
        raise ConfigError(str(exc), "name a user or project as runs record it") from None
    return scope("project" if project else "user", name, queue)


@click.group()
def quota() -> None:
    """Limit the runs and GPUs a user or project holds at once (the whole fleet, at once)."""


@quota.command(name="set")
@click.argument("name")
@click.option("--runs", type=int, default=None, help="runs at once")
@click.option("--gpus", type=int, default=None, help="GPUs at once")
@click.option("--queue", "-q", default=None, help="on this queue only (default: overall)")
@click.option("--project", "is_project", is_flag=True, help="NAME is a project, not a user")
def set_quota(
    name: str, runs: int | None, gpus: int | None, queue: str | None, is_project: bool
) -> int:
    """Set NAME's quota: `celery-agent quota set alice --runs 8 --gpus 4 [--queue gpu0]`.

    Runs over it wait off the queue (without a worker slot) and start as the user's runs end.
    A limit not given is left as it was (`quota rm` drops the quota, both limits)."""
    from .cli import console

    where = _scope(name, is_project, queue)
    limits = quotas_in_force().set(where, runs, gpus)
    console.print(f"quota {where}: {_limits(limits)}", markup=False)
    return 0


@quota.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="print the quotas and usage as JSON")
def list_quotas(as_json: bool) -> int:
    """List the quotas in force and what each user or project holds now."""
    from .cli import console

    quotas = quotas_in_force()
    rows = [row | {"kind": kind} for kind in KINDS for row in quotas.report(kind)]
    if as_json:
        console.print_json(json.dumps(rows))
        return 0
    if not rows:
        console.print("no quotas: every user may use every slot (celery-agent quota set USER "
                      "--runs N --gpus N)", markup=False)  # fmt: skip
        return 0
    console.print(quota_table(rows))
    return 0


@quota.command(name="rm")
@click.argument("name")
@click.option("--queue", "-q", default=None, help="the quota on this queue")
@click.option("--project", "is_project", is_flag=True, help="NAME is a project, not a user")
def remove_quota(name: str, queue: str | None, is_project: bool) -> int:
    """Remove NAME's quota set with `quota set` (a quota in the settings stays)."""
    from .cli import console

    where = _scope(name, is_project, queue)
    if not quotas_in_force().remove(where):
        raise ConfigError(f"no quota {where} is set in Redis", "see `celery-agent quota ls`")
    console.print(f"quota {where} removed", markup=False)
    return 0


def quota_table(rows: list[dict[str, object]]) -> Table:
    """Quotas against usage: 'runs 2/8, GPUs 4/4' per user or project (and queue)."""
    table = Table("who", "queue", "runs", "GPUs", "set in", title="quotas", title_justify="left")
    for row in rows:
        limits = row["limits"]
        assert isinstance(limits, dict)
        table.add_row(
            escape(f"{row['kind']} {row[str(row['kind'])]}"),
            escape(str(row["queue"] or "(all)")),
            _used(row["runs"], limits.get("runs")),
            _used(row["gpus"], limits.get("gpus")),
            str(row["source"]),
        )
    return table


def _used(used: object, limit: object) -> str:
    return f"{used}" if limit is None else f"{used}/{limit}"


def _limits(limits: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in limits.items())
