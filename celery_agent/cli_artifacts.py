"""`celery-agent artifacts`: the files a run kept in the artifact store, and fetching them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table


@click.command()
@click.argument("run")
@click.option("--get", "dest", type=click.Path(path_type=Path), help="download them into DEST")
@click.option("--root", help="the artifact root as this machine reaches it (default: recorded)")
def artifacts(run: str, dest: Path | None, root: str | None) -> int:
    """List the files RUN kept in the artifact store (path, size, sha256), or --get them."""
    from .artifacts import of_run
    from .cli import console, err_console
    from .handle import get_run

    record = get_run(run).info()
    store, files = of_run(record, root)
    kept = record["artifacts"]
    if dest is None:
        console.print(manifest_table(files))
        if kept.get("status") == "failed":
            err_console.print(f"artifacts: failed ({kept.get('error')})", markup=False)
        return 0
    got = store.download(record["run_id"], dest, files, lambda rel: console.print(escape(rel)))
    console.print(f"{len(got)} file(s) in {escape(str(dest))}")
    return 0


def manifest_table(files: list[dict[str, Any]]) -> Table:
    """A manifest as a table: path, size, sha256."""
    table = Table("path", "size", "sha256")
    for entry in files:
        table.add_row(escape(str(entry["path"])), str(entry["size"]), str(entry["sha256"])[:16])
    return table


def artifacts_line(kept: dict[str, Any]) -> str:
    """One line for `show`: 'uploaded: 3 file(s), 1234 bytes at URL' or 'failed (reason)'."""
    if kept.get("status") == "failed":
        return f"failed ({kept.get('error')})"
    count, size = kept.get("count", 0), kept.get("bytes", 0)
    return f"{kept.get('status')}: {count} file(s), {size} bytes at {kept.get('url')}"


def checkpoints_line(synced: dict[str, Any], now: float) -> str:
    """One line for `show`: what the run's checkpoint sync keeps, and how fresh it is."""
    every = f"every {synced.get('interval')}s" if synced.get("interval") else "when it stops"
    line = (
        f"{synced.get('files', 0)} file(s), {synced.get('bytes', 0)} bytes at {synced.get('url')}"
    )
    line += f", synced {every}"
    if synced.get("synced_at"):
        line += f", last {now - float(synced['synced_at']):.0f}s ago"
    return line + (f"; failed ({synced['error']})" if synced.get("error") else "")


def resumed_line(resumed: dict[str, Any]) -> str:
    """One line for `show`: where a run's restored checkpoints came from."""
    return (
        f"from run {resumed.get('from')} (attempt {resumed.get('attempt')}): "
        f"{resumed.get('files')} file(s), {resumed.get('bytes')} bytes in {resumed.get('seconds')}s"
    )
