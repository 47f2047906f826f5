"""`celery-agent ls`: recent runs, filtered by state, user or project, or grouped by user or
project."""

from __future__ import annotations

import time

import click
from rich.markup import escape
from rich.table import Column, Table

from .usage import GROUPS, ended_text, group_runs


@click.command(name="ls")
@click.option("--limit", "-n", default=20, show_default=True)
@click.option("--state", default=None, help="only runs in this state")
@click.option("--user", "-u", default=None, help="only runs of this user")
@click.option("--project", default=None, help="only runs of this project")
@click.option(
    "--by", type=click.Choice(GROUPS), default=None,
    help="one row per user or project: runs queued, active and ended (of the last --limit runs)",
)  # fmt: skip
def list_runs(
    limit: int, state: str | None, user: str | None, project: str | None, by: str | None
) -> int:
    """List recent runs, newest first (a waiting run says what it waits for)."""
    from .app import get_store
    from .cli import console

    rows = get_store().list_runs(limit, state, user=user, project=project)
    if by is not None:
        console.print(groups_table(rows, by))
        return 0
    run_id = Column("run id", no_wrap=True, min_width=12)  # (an id prefix always fits)
    table = Table(run_id, "name", "user", "project", "state", "queue", "worker", "submitted",
                  "exit")  # fmt: skip
    for row in rows:
        when = time.strftime("%m-%d %H:%M:%S", time.localtime(row.get("submitted_at") or 0))
        cells = (row["run_id"], row.get("name", ""), row.get("user", ""), row.get("project", ""),
                 state_text(row), row.get("queue", ""), row.get("worker", ""), when,
                 "" if row.get("exit_code") is None else row["exit_code"])  # fmt: skip
        table.add_row(*(escape(str(c)) for c in cells))
    console.print(table)
    return 0


def state_text(row: dict[str, object]) -> str:
    """A run's state, and for a waiting run what it waits for ('queued (user a at quota...)')."""
    st = str(row.get("state") or "")
    waiting = row.get("waiting")
    return f"{st} ({waiting})" if st == "queued" and waiting else st


def groups_table(rows: list[dict[str, object]], by: str) -> Table:
    """Runs per user (or project): queued, active and ended."""
    table = Table(by, "queued", "active", "ended", title=f"runs by {by}", title_justify="left")
    for group in group_runs(rows, by):
        table.add_row(escape(str(group[by])), str(group["queued"]), str(group["active"]),
                      escape(ended_text(group["ended"])))  # fmt: skip
    return table
