"""Pulling a run's kept files from the artifact store into a local folder.

A file keeps its path from the run's output folder under the destination (``plots/loss.txt`` ->
``DEST/plots/loss.txt``); each is checked against its manifest's sha256 (against its size when
the manifest has none: the worker that uploaded it died before it hashed it, see :mod:`.digests`)
and appears whole or not at all (:mod:`.transfer`). What to pull is named by paths of the manifest: a file, or a folder
(every file under it); none names them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .artifacts import ArtifactStore, of_run
from .errors import ConfigError
from .transfer import Mismatch, copy_checked

#: told (path, bytes of this chunk) as files arrive
Progress = Callable[[str, int], None]


def select(files: list[dict[str, Any]], paths: Sequence[str], run_id: str) -> list[dict[str, Any]]:
    """The manifest entries ``paths`` name (all of them when none is given), in manifest order;
    a ConfigError naming a path that is neither a kept file nor a folder of kept files."""
    if not paths:
        return list(files)
    wanted: dict[str, dict[str, Any]] = {}
    for path in paths:
        clean = path.strip().strip("/")
        found = [f for f in files if f["path"] == clean or str(f["path"]).startswith(f"{clean}/")]
        if not clean or not found:
            raise ConfigError(
                f"run {run_id} kept no file or folder {path!r}",
                f"see what it kept with `celery-agent artifacts {run_id}`",
            )
        wanted.update((str(f["path"]), f) for f in found)
    return [f for f in files if str(f["path"]) in wanted]


def pull(
    record: dict[str, Any],
    dest: Path,
    paths: Sequence[str] = (),
    root: str | None = None,
    progress: Progress | None = None,
    start: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[Path]:
    """Download the files ``paths`` name (default all) of the run ``record`` describes into
    ``dest``; returns their local paths. ``root``: the artifact root as this machine reaches it
    (default the recorded one); ``start`` is told the entries about to be pulled."""
    store, files = of_run(record, root)
    chosen = select(files, paths, str(record["run_id"]))
    if start is not None:
        start(chosen)
    return fetch(store, str(record["run_id"]), chosen, dest, progress)


def fetch(
    store: ArtifactStore,
    run_id: str,
    entries: Iterable[dict[str, Any]],
    dest: Path,
    progress: Progress | None = None,
) -> list[Path]:
    """Copy ``entries`` of the run's manifest from ``store`` into ``dest``."""
    import fsspec

    fs, base = fsspec.core.url_to_fs(store.run_url(run_id))
    out = []
    for entry in entries:
        rel = str(entry["path"])
        target = (dest / rel).resolve()
        if dest.resolve() not in target.parents:
            raise ConfigError(f"artifact path {rel!r} leaves {dest}", "check the manifest")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            copy_checked(fs, f"{base}/{rel}", target, sha256=entry.get("sha256"),
                         size=entry.get("size"), progress=_teller(progress, rel))  # fmt: skip
        except Mismatch as err:
            raise ConfigError(
                f"artifact {rel} of run {run_id}: {err}",
                "upload it again (rerun) or check the store for changes",
            ) from None
        except FileNotFoundError:
            raise ConfigError(
                f"artifact {rel} of run {run_id} is not in the store {store.url}",
                "it was deleted (retention?), or give --root: the store as this machine sees it",
            ) from None
        out.append(target)
    return out


def _teller(progress: Progress | None, rel: str) -> Callable[[int], None]:
    """``progress`` for one file: told each chunk's length."""
    if progress is None:
        return lambda _: None
    return lambda n: progress(rel, n)
