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
@click.option("--wait", "wait", type=float, default=600.0, show_default=True,
              help="with --get: seconds to wait for outputs still uploading")  # fmt: skip
def artifacts(run: str, dest: Path | None, root: str | None, wait: float) -> int:
    """List the files RUN kept in the artifact store (path, size, sha256), or --get them."""
    from .artifacts import of_run
    from .cli import console, err_console
    from .handle import get_run

    handle = get_run(run)
    record = handle.settled(wait if dest is not None else 0.0)
    kept = record.get("artifacts") or {}
    if dest is None and kept.get("status") == "uploading":
        console.print(f"artifacts: {artifacts_line(kept)}", markup=False)
        return 0
    store, files = of_run(record, root)
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
    if kept.get("status") == "uploading":
        return f"uploading to {kept.get('url')} (in the background; --get waits for it)"
    count, size = kept.get("count", 0), kept.get("bytes", 0)
    return f"{kept.get('status')}: {count} file(s), {size} bytes at {kept.get('url')}"
