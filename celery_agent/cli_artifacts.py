"""`celery-agent artifacts` and `celery-agent pull`: the files a run kept in the artifact store,
and fetching them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.filesize import decimal
from rich.markup import escape
from rich.table import Table

from .pull import Progress


@click.command()
@click.argument("run")
@click.option("--get", "dest", type=click.Path(path_type=Path), help="download them into DEST")
@click.option("--root", help="the artifact root as this machine reaches it (default: recorded)")
@click.option("--wait", "wait", type=float, default=600.0, show_default=True,
              help="with --get: seconds to wait for outputs still uploading in the background")  # fmt: skip
def artifacts(run: str, dest: Path | None, root: str | None, wait: float) -> int:
    """List the files RUN kept in the artifact store (path, size, when), or --get them all
    (the same as `celery-agent pull RUN -o DEST`)."""
    from .artifacts import of_run
    from .cli import console, err_console
    from .handle import get_run

    if dest is not None:  # (pull's own defaults for the rest: every file, a bar on a terminal)
        return click.get_current_context().invoke(pull, run=run, dest=dest, root=root, wait=wait)
    record = get_run(run).info()
    if (record.get("artifacts") or {}).get("status") == "uploading":
        console.print(f"artifacts: {artifacts_line(record['artifacts'])}", markup=False)
        return 0
    files = of_run(record, root)[1]

    console.print(manifest_table(files, record))
    kept = record["artifacts"]
    if kept.get("status") == "failed":
        err_console.print(f"artifacts: failed ({kept.get('error')})", markup=False)
    return 0


@click.command()
@click.argument("run")
@click.argument("paths", nargs=-1)
@click.option(
    "-o", "--output", "dest", type=click.Path(path_type=Path), default=Path("."),
    help="folder to put them in, each under its path in the run's output (default: here)",
)  # fmt: skip
@click.option(
    "--progress/--no-progress", default=None,
    help="show a progress bar on stderr (default: when stderr is a terminal)",
)  # fmt: skip
@click.option("--root", help="the artifact root as this machine reaches it (default: recorded)")
@click.option("--wait", "wait", type=float, default=600.0, show_default=True,
              help="seconds to wait for outputs still uploading in the background")  # fmt: skip
def pull(
    run: str,
    paths: tuple[str, ...],
    dest: Path,
    progress: bool | None,
    root: str | None,
    wait: float,
) -> int:
    """Download files RUN kept: the PATHs given (files or folders of its output), else all.

    Each file is checked against the sha256 of the run's manifest. The local paths are printed.

    \b
    celery-agent pull 3f2a model.pt -o models/
    celery-agent pull train-resnet plots/ --progress
    """
    from .cli import console, err_console
    from .handle import get_run
    from .pull import pull as pull_files

    record = get_run(run).settled(wait)  # (outputs still uploading: wait for them)
    show = err_console.is_terminal if progress is None else progress
    with _bar(show) as (start, advance):
        got = pull_files(record, dest, paths, root, advance, start)
    for path in got:
        console.print(escape(str(path)))
    err_console.print(f"{len(got)} file(s) in {dest}", markup=False)
    return 0


@contextmanager
def _bar(show: bool) -> Iterator[tuple[Any, Progress | None]]:
    """(start, advance) for :func:`.pull.pull`: a byte progress bar on stderr, or nothing."""
    if not show:
        yield None, None
        return
    from rich import progress as rp

    from .cli import err_console

    columns = (rp.TextColumn("{task.description}"), rp.BarColumn(), rp.DownloadColumn(),
               rp.TransferSpeedColumn(), rp.TimeRemainingColumn())  # fmt: skip
    with rp.Progress(*columns, console=err_console) as bar:
        task = bar.add_task("pull", total=0)

        def start(entries: list[dict[str, Any]]) -> None:
            bar.update(task, total=sum(int(e.get("size") or 0) for e in entries))

        def advance(rel: str, n: int) -> None:
            bar.update(task, advance=n, description=escape(rel))

        yield start, advance


def manifest_table(files: list[dict[str, Any]], record: dict[str, Any] | None = None) -> Table:
    """A manifest as a table: path, size, when (the file's time if kept, else the run's end)."""
    ended = (record or {}).get(f"{(record or {}).get('state')}_at")
    table = Table("path", "size", "when")
    for entry in files:
        when = entry.get("mtime") or ended
        table.add_row(escape(str(entry["path"])), decimal(int(entry["size"])), _when(when))
    return table


def _when(stamp: Any) -> str:
    if not stamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(stamp)))


def artifacts_line(kept: dict[str, Any]) -> str:
    """One line for `show`: 'uploaded: 3 file(s), 1234 bytes at URL' (saying so while their
    sha256 are still to come), or 'failed (reason)'."""
    if kept.get("status") == "failed":
        return f"failed ({kept.get('error')})"
    if kept.get("status") == "uploading":
        return f"uploading to {kept.get('url')} (in the background; pull waits for it)"
    count, size = kept.get("count", 0), kept.get("bytes", 0)
    hashes = {"pending": " (sha256 still being computed by its worker)",
              "partial": " (sha256 of some files missing: they changed after the upload)"}  # fmt: skip
    line = f"{kept.get('status')}: {count} file(s), {size} bytes at {kept.get('url')}"
    return line + hashes.get(str(kept.get("hashes")), "")


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
