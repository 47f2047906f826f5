"""`celery-agent keep` and `celery-agent delete`: how long a run (and what it kept) lives."""

from __future__ import annotations

import click


@click.command()
@click.argument("run")
@click.option("--off", is_flag=True, help="let retention delete it again")
def keep(run: str, off: bool) -> int:
    """Mark RUN keep: retention never deletes it, its artifacts or its run folder (--off: undo)."""
    from .cli import console
    from .handle import get_run
    from .retention import set_keep

    handle = get_run(run)
    set_keep(handle.store, handle.run_id, not off)
    text = "no longer kept: retention may delete it" if off else "kept: retention leaves it alone"
    console.print(f"run {handle.run_id} {text}", markup=False)
    return 0


@click.command()
@click.argument("run")
@click.option("--root", help="the artifact root as this machine reaches it (default: recorded)")
@click.option("--yes", is_flag=True, help="do not ask")
def delete(run: str, root: str | None, yes: bool) -> int:
    """Delete an ended RUN now: its artifacts in the store, its record, log and metrics."""
    from .cli import console
    from .handle import get_run
    from .retention import delete_run

    handle = get_run(run)
    if not yes:
        click.confirm(f"delete run {handle.run_id} and its artifacts?", abort=True)
    had = delete_run(handle.store, handle.run_id, root)
    what = "its record and artifacts" if had else "its record (it kept no artifacts)"
    console.print(f"deleted run {handle.run_id}: {what}", markup=False)
    return 0
