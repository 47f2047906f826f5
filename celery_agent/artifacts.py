"""The artifact store: a run's output folder kept under ``{artifact_root}/runs/{run_id}/``.

``artifact_root`` is any fsspec URL (``file:///mnt/nfs/artifacts``, ``s3://bucket/prefix`` with
``s3fs``, ...); :mod:`.artifact_store` opens it, keeps credentials out of it and explains its errors.
Files are copied by the store's own put, in parallel threads, each retried a few times; what was
kept is described by a manifest (path, size, mtime) that goes on the run record and, as
``manifest.json``, next to the files. Each file's sha256 is added to both after the run's end,
from the files still on the worker (:mod:`.digests`): the run's end does not wait for it.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

from .artifact_store import default_url, explain, kind, makes_folders, open_url, refuse_password
from .errors import ConfigError
from .settings import Settings

logger = logging.getLogger(__name__)

CHUNK = 4 * 2**20  #: bytes read and written at a time
THREADS = 8  #: files copied at once
TRIES = 3  #: attempts per file before the upload is reported failed
BACKOFF = (0.2, 1.0)  #: seconds between attempts
MANIFEST = "manifest.json"
RECORD_FILES = 1000  #: manifest entries kept on the run record (manifest.json has them all)
#: in a run's folder: the files of its output folder the checkpoint sync already put in the store,
#: with the size and mtime (ns) they had and the store's key of the copy: the end's upload lists
#: them in the manifest but copies them no more
SYNCED = "checkpoints.json"
PENDING = "pending"  #: the ``hashes`` of an upload whose sha256 are still to come (:mod:`.digests`)
HASH_RATE = 50 * 2**20  #: bytes a second a busy worker is assumed to hash at (for ``hashed_by``)
HASH_SLACK = 60.0  #: seconds added to ``hashed_by`` (its thread may be hashing another run's)


def excluded(path: str, patterns: Sequence[str]) -> bool:
    """Whether the relative posix ``path`` (or a folder above it) matches one of ``patterns``."""
    pure = PurePosixPath(path)
    candidates = [path, *(str(parent) for parent in pure.parents if str(parent) != ".")]
    return any(fnmatch.fnmatchcase(c, p.rstrip("/")) for c in candidates for p in patterns)


def output_files(folder: Path, exclude: Sequence[str] = ()) -> list[str]:
    """The files under ``folder`` to keep, as sorted relative posix paths."""
    out = []
    for root, dirs, files in os.walk(folder):
        rel_root = Path(root).relative_to(folder).as_posix()
        for name in files:
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            if Path(root, name).is_file() and not excluded(rel, exclude):
                out.append(rel)
        dirs.sort()
    return sorted(out)


class ArtifactStore:
    """One artifact root: where runs' outputs are uploaded to and downloaded from."""

    def __init__(self, url: str) -> None:
        refuse_password(url)
        self.url = url.rstrip("/")
        self._fs: Any = None

    @classmethod
    def for_home(cls, artifact_root: str | None, home: Path) -> ArtifactStore:
        """The store named by the ``artifact_root`` setting, else ``{home}/artifacts``."""
        return cls(default_url(artifact_root, home))

    @property
    def fs(self) -> Any:
        """The fsspec filesystem (opened on first use; an unknown scheme is a ConfigError)."""
        if self._fs is None:
            self._fs, self._root = open_url(self.url)
        return self._fs

    def run_url(self, run_id: str) -> str:
        """Where a run's files live in the store."""
        return f"{self.url}/runs/{run_id}"

    def path(self, run_id: str, rel: str = "") -> str:
        """The store's own path (no scheme) of a run's folder, or of ``rel`` in it."""
        return self._path(run_id, rel)

    def _path(self, run_id: str, rel: str = "") -> str:
        self.fs  # noqa: B018 (opens the filesystem, which sets the root)
        base = f"{self._root.rstrip('/')}/runs/{run_id}"
        return f"{base}/{rel}" if rel else base

    # -- upload ---------------------------------------------------------------------------------
    def upload(
        self,
        run_id: str,
        folder: Path,
        exclude: Sequence[str] = (),
        threads: int = THREADS,
        synced: Mapping[str, Sequence[Any]] | None = None,
    ) -> dict[str, Any]:
        """Copy ``folder`` to the run's place in the store; returns what the run record keeps:
        ``status`` (uploaded, failed, empty), ``url``, ``files`` (path, size, mtime), ``bytes``,
        ``seconds``, ``hashes`` (pending: see :mod:`.digests`) with ``hashed_by`` and, when it
        failed, ``error``. Never raises. A file of ``synced`` (path -> size, mtime in ns, the
        store's key of its copy) that still matches is not copied again."""
        synced = synced or {}
        t0 = time.monotonic()
        out: dict[str, Any] = {"root": self.url, "url": self.run_url(run_id), "files": []}
        files: list[str] = []
        try:
            files = output_files(folder, exclude)
            kept, errors = (
                self._copy_all(run_id, folder, files, threads, synced) if files else ([], [])
            )
            if files and not errors:
                body = {"hashes": PENDING, "files": kept}
                self.write(run_id, MANIFEST, json.dumps(body, indent=1).encode())
        except Exception as err:  # an unknown scheme, a missing package, a folder it cannot read
            kept, errors = [], [explain(err, self.url)]
        out["files"] = kept[:RECORD_FILES]
        out["count"], out["bytes"] = len(kept), sum(f["size"] for f in kept)
        out["status"] = "failed" if errors else "uploaded" if kept else "empty"
        if out["status"] == "uploaded":
            out |= {"hashes": PENDING, "hashed_by": hashed_by(out["bytes"])}
        if errors:
            missed = len(files) - len(kept)
            out["error"] = errors[0] + (f" ({missed} file(s) not kept)" if missed else "")
        out["seconds"] = round(time.monotonic() - t0, 3)
        return out

    def _copy_all(
        self,
        run_id: str,
        folder: Path,
        files: list[str],
        threads: int,
        synced: Mapping[str, Sequence[Any]],
    ) -> tuple[list[dict[str, Any]], list[str]]:
        fatal: list[str] = []  #: a failure every other file would meet too (no bucket, ...)

        def one(rel: str) -> dict[str, Any] | str:
            return self._copy_retried(run_id, folder, rel, fatal, synced.get(rel))

        with ThreadPoolExecutor(max(1, min(threads, len(files)))) as pool:
            done = list(pool.map(one, files))
        kept = [entry for entry in done if isinstance(entry, dict)]
        return kept, [entry for entry in done if isinstance(entry, str)]

    def _copy_retried(
        self, run_id: str, folder: Path, rel: str, fatal: list[str], synced: Sequence[Any] | None
    ) -> dict[str, Any] | str:
        """One file's manifest entry, or the reason its last attempt failed. A failure of the
        store itself (see :func:`.artifact_store.kind`) is not retried and stops the other files."""
        reason = ""
        for attempt in range(TRIES):
            if fatal:
                return fatal[0]
            try:
                return self._copy(folder / rel, self._path(run_id, rel), rel, synced)
            except Exception as err:
                reason = explain(err, self.url)
                logger.warning("upload of %s (try %d of %d) failed: %s", rel, attempt + 1,
                               TRIES, reason)  # fmt: skip
                if kind(err):
                    fatal.append(reason)
                    return reason
                if attempt < TRIES - 1:
                    time.sleep(BACKOFF[min(attempt, len(BACKOFF) - 1)])
        return f"{rel}: {reason}"

    def _copy(
        self, local: Path, remote: str, rel: str, synced: Sequence[Any] | None = None
    ) -> dict[str, Any]:
        """Copy one file with the store's own put (a kernel copy on a local folder, multipart on
        an object store); its entry has the size and mtime it had when the copy began (what its
        sha256, computed later, is checked against). A checkpoint the sync put there as it is
        now is not copied again."""
        st = local.stat()
        if not self._holds(local, remote, synced):
            if makes_folders(self.fs):
                self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
            self.fs.put_file(str(local), remote)
        return {"path": rel, "size": st.st_size, "mtime": st.st_mtime_ns / 1e9}

    def _holds(self, local: Path, remote: str, synced: Sequence[Any] | None) -> bool:
        """Whether the store's copy at ``remote`` is ``local`` as it is: ``synced`` (size, mtime
        in ns, the store's key of the copy) still matches both."""
        if not synced or len(synced) != 3:
            return False
        st = local.stat()
        try:
            return list(synced) == [st.st_size, st.st_mtime_ns, self.copy_key(remote)]
        except Exception:  # (no such copy, or the store would not say)
            return False

    def copy_key(self, path: str) -> str:
        """What tells one copy of a file in the store from another: its size and its ETag (an
        object store) or mtime (a folder), read afresh (no listing cached in this process)."""
        self.fs.invalidate_cache(path)
        info = self.fs.info(path)
        for name in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "updated", "created"):
            if info.get(name) is not None:
                return f"{info.get('size')}:{info[name]}"
        return f"{info.get('size')}:{sorted(info.items())}"

    def write(self, run_id: str, rel: str, data: bytes) -> None:
        """Write ``data`` as the run's file ``rel``, whole or not at all: on a folder, to a
        hidden part renamed over it (an object store's put is whole already)."""
        remote = self._path(run_id, rel)
        if not makes_folders(self.fs):
            with self.fs.open(remote, "wb") as dst:
                dst.write(data)
            return
        folder, name = remote.rsplit("/", 1)
        part = f"{folder}/.{name}.part-{uuid.uuid4().hex[:8]}"
        with self.fs.open(part, "wb") as dst:
            dst.write(data)
        self.fs.mv(part, remote)

    def remove(self, run_id: str) -> bool:
        """Delete everything the run kept in the store; False when it kept nothing there."""
        path = self._path(run_id)
        if not self.fs.exists(path):
            return False
        self.fs.rm(path, recursive=True)
        return True

    # -- reading --------------------------------------------------------------------------------
    def manifest(self, run_id: str) -> list[dict[str, Any]]:
        """The run's manifest as the store has it (its files: a file's ``sha256`` is there once
        it was hashed)."""
        with self.fs.open(self._path(run_id, MANIFEST), "rb") as src:
            body = json.loads(src.read())
        return list(body["files"] if isinstance(body, dict) else body)  # (a list: older ones)

    def open_file(self, run_id: str, rel: str) -> Any:
        """One of the run's files (a path from its manifest), opened for reading in binary."""
        return self.fs.open(self._path(run_id, rel), "rb")


def of_run(
    record: dict[str, Any], root: str | None = None
) -> tuple[ArtifactStore, list[dict[str, Any]]]:
    """The store and the manifest of the run ``record`` describes (``root``: the artifact root
    as this machine reaches it, default the recorded one); a ConfigError when it kept none."""
    kept = record.get("artifacts") or {}
    if kept.get("status") == "uploading":
        raise ConfigError(
            f"the outputs of run {record.get('run_id')} are still uploading (in the background)",
            "wait for them: celery-agent artifacts RUN --get DEST --wait SECONDS, or "
            "RunHandle.pull(dest, wait=...)",
        )
    if not kept.get("root"):
        raise ConfigError(
            f"run {record.get('run_id')} kept no artifacts (state {record.get('state')})",
            "outputs are uploaded when a run ends; wait for it (celery-agent wait)",
        )
    store = ArtifactStore(root or kept["root"])
    files = list(kept.get("files") or [])
    if len(files) < int(kept.get("count") or 0):  # the record holds the first entries only
        files = store.manifest(str(record["run_id"]))
    return store, files


def hashed_by(total_bytes: int, now: float | None = None) -> float:
    """When the sha256 of ``total_bytes`` just uploaded should be on the record (epoch seconds):
    who waits for them waits no longer (the worker hashing them may have died)."""
    return round((time.time() if now is None else now) + HASH_SLACK + total_bytes / HASH_RATE, 3)


def upload_run(settings: Settings, run_dir: Path, exclude: Sequence[str]) -> dict[str, Any]:
    """Upload a run's output folder (``run_dir/output``) to the store of ``settings``; never
    raises: a failure is the result's ``status`` and ``error``."""
    try:
        store = ArtifactStore.for_home(settings.artifact_root, settings.home)
    except ConfigError as err:  # (a URL with a password)
        return failed(str(err), store_url=None)
    return store.upload(run_dir.name, run_dir / "output", exclude, synced=synced_files(run_dir))


def synced_files(run_dir: Path) -> dict[str, list[Any]]:
    """What the checkpoint sync of the run in ``run_dir`` put in the store (see :data:`SYNCED`)."""
    try:
        return dict(json.loads((run_dir / SYNCED).read_text()))
    except (OSError, ValueError):  # (none, or unreadable: everything is copied)
        return {}


def uploading(settings: Settings, run_id: str) -> dict[str, Any]:
    """What the run record keeps while its outputs upload in the background."""
    store = ArtifactStore.for_home(settings.artifact_root, settings.home)
    return {"status": "uploading", "root": store.url, "url": store.run_url(run_id),
            "files": [], "count": 0, "bytes": 0, "since": time.time()}  # fmt: skip


def failed(reason: str, store_url: str | None) -> dict[str, Any]:
    """What the run record keeps when its outputs could not be kept."""
    kept: dict[str, Any] = {"status": "failed", "error": reason, "files": [], "count": 0}
    return kept | {"bytes": 0, **({"root": store_url} if store_url else {})}


def describe(kept: dict[str, Any]) -> str | None:
    """The line a run's log gets for its upload (None when there was nothing to keep)."""
    status = kept.get("status")
    if status == "failed":
        return f"artifacts: failed ({kept.get('error')})"
    if status == "uploading":
        return f"artifacts: uploading to {kept.get('url')} (in the background)"
    if status == "uploaded":
        return f"artifacts: {kept['count']} file(s), {kept['bytes']} bytes -> {kept['url']}"
    return None
