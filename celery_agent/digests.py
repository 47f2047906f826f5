"""The sha256 of a run's kept files, computed after its upload from the files still on the worker.

An upload copies the files with the store's own put and writes the manifest at once with each
file's path, size and mtime, ``hashes: "pending"`` and ``hashed_by`` (when the hashes should be
there, from the bytes to read). Hashing every byte costs more than copying them on a busy
machine, so the run's end does not wait for it: once the run's end is written, a thread of the
worker's process (:data:`DIGESTS`, one file at a time) reads the run's output folder, which is
still on the worker, and adds each file's sha256 to ``manifest.json`` and the run record, with
``hashes: "complete"`` (or ``"partial"`` when a file changed or went away meanwhile: that one
gets none).

The process that will hash marks it in Redis (``run:{id}:digest``, set before the run's end is
written, renewed every quarter of ``claim_ttl``, deleted once the hashes are recorded). Who
needs the hashes (pull's check, ``run://`` inputs and the input cache keyed by content) waits
for them while they are pending and the mark is there, never past ``hashed_by``
(:func:`wait_left`), then uses those there and falls back, for a file without one, to what a
store without hashes gives (its size; the store's ETag, or size and mtime, for an input's key).
A worker that dies before it hashed leaves ``pending`` and a mark that expires: never a wrong
file, never a hang.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .artifacts import MANIFEST, PENDING, RECORD_FILES, ArtifactStore

if TYPE_CHECKING:
    from .state import RunStore

logger = logging.getLogger(__name__)

COMPLETE, PARTIAL = "complete", "partial"  #: the ``hashes`` field once hashed (or PENDING)


def pending(kept: Mapping[str, Any] | None) -> bool:
    """Whether the kept files' sha256 are still being computed (a record's ``artifacts``)."""
    return bool(kept) and kept.get("hashes") == PENDING  # type: ignore[union-attr]


def wait_left(record: Mapping[str, Any], store: RunStore | None = None) -> float:
    """Seconds worth waiting for the hashes of the run ``record`` describes: 0 when they are
    there, were never to come, no process hashes them (no mark in ``store``: its worker died),
    or ``hashed_by`` passed."""
    kept = record.get("artifacts") or {}
    if not pending(kept):
        return 0.0
    left = max(0.0, float(kept.get("hashed_by") or 0.0) - time.time())
    try:
        if left and store is not None and not store.r.exists(store.keys.digest(record["run_id"])):
            return 0.0
    except Exception as err:  # (Redis away: hashed_by bounds the wait)
        logger.debug("the digest mark of %s cannot be read: %s", record.get("run_id"), err)
    return left


def mark(store: RunStore | None, run_id: str, kept: Mapping[str, Any] | None, ttl: float) -> None:
    """Say in Redis that this process will hash the files ``kept`` names (when they are to be
    hashed), for ``ttl`` seconds; call it before the record saying ``pending`` is written, and
    :meth:`Digests.start` after. Never raises."""
    if store is None or kept is None or not pending(kept):
        return
    holder = f"{socket.gethostname()}|{os.getpid()}"
    _write(store, run_id, "set", lambda r, key: r.set(key, holder, px=_ms(ttl)))


def file_digest(path: Path, size: int, mtime: float) -> str | None:
    """The sha256 of ``path`` when it still has ``size`` and ``mtime`` before and after it is
    read (the copy the upload made is of that file), else None."""

    def same() -> bool:
        st = path.stat()
        return st.st_size == size and st.st_mtime_ns / 1e9 == mtime

    try:
        if not same():
            return None
        with path.open("rb") as src:
            digest = hashlib.file_digest(src, "sha256").hexdigest()
        return digest if same() else None
    except OSError:
        return None


def digest_all(folder: Path, entries: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """``entries`` of a manifest with the sha256 of each file of ``folder`` that did not change
    since the upload, and the ``hashes`` field they make (complete or partial)."""
    out, missed = [], 0
    for entry in entries:
        known = entry.get("sha256")
        if known is None and "mtime" in entry:
            known = file_digest(folder / str(entry["path"]), int(entry["size"]), entry["mtime"])
        missed += known is None
        out.append(dict(entry) | ({"sha256": known} if known else {}))
    return out, PARTIAL if missed else COMPLETE


def finish(
    store: RunStore | None, run_id: str, folder: Path, kept: Mapping[str, Any]
) -> str | None:
    """Hash the files of ``folder`` the upload ``kept`` names and put the hashes in the store's
    manifest and on the run record (when ``store`` is given); returns the ``hashes`` field
    written, None when the run or its copy went away meanwhile (retention) or it failed."""
    try:
        artifact_store = ArtifactStore(str(kept["root"]))
        entries = list(kept.get("files") or [])
        if len(entries) < int(kept.get("count") or 0):
            entries = artifact_store.manifest(run_id)
        files, hashes = digest_all(folder, entries)
        artifact_store.fs.invalidate_cache(artifact_store.path(run_id))
        if not artifact_store.fs.exists(artifact_store.path(run_id, MANIFEST)):
            return None  # (deleted with its run meanwhile)
        body = {"hashes": hashes, "files": files}
        artifact_store.write(run_id, MANIFEST, json.dumps(body, indent=1).encode())
        if store is not None and not _on_record(store, run_id, kept, files, hashes):
            return None
    except Exception as err:  # (the record keeps "pending"; its consumers fall back)
        logger.warning("the sha256 of the outputs of run %s were not recorded: %s", run_id, err)
        return None
    logger.info("run %s: sha256 of %d kept file(s) recorded (%s)", run_id, len(files), hashes)
    return hashes


def _on_record(
    store: RunStore, run_id: str, kept: Mapping[str, Any], files: list[dict[str, Any]], hashes: str
) -> bool:
    """Put the hashes on the run's ``artifacts`` when it still describes this upload (a run
    deleted or uploaded again meanwhile keeps what it has)."""
    key = store.keys.run(run_id)
    with store.r.pipeline() as pipe:
        pipe.watch(key)  # (a write in between - retention, a rerun - aborts this one)
        raw = pipe.hget(key, "artifacts")
        now = json.loads(raw) if raw else {}
        if not pending(now) or now.get("url") != kept.get("url"):
            return False
        now = {k: v for k, v in now.items() if k != "hashed_by"}
        now |= {"hashes": hashes, "files": files[:RECORD_FILES]}
        pipe.multi()
        store.update(run_id, pipe=pipe, artifacts=now)
        pipe.execute()
    return True


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))


def _write(store: RunStore, run_id: str, doing: str, what: Callable[[Any, str], object]) -> None:
    """``what(redis, key of the run's mark)``, a failure logged."""
    try:
        what(store.r, store.keys.digest(run_id))
    except Exception as err:  # (a mark that is not there: consumers stop waiting sooner)
        logger.warning("could not %s the digest mark of %s: %s", doing, run_id, err)


class Digests:
    """This process's hashing of kept files: one thread, one run at a time, oldest first, and
    one that renews the marks of the runs it has yet to finish."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._queue: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._pid = 0  #: the process the threads belong to (a forked child starts its own)
        self._marks: dict[str, tuple[RunStore, float]] = {}  #: run id -> (store, ttl)
        self._busy = 0

    def start(
        self,
        store: RunStore | None,
        run_id: str,
        folder: Path,
        kept: Mapping[str, Any] | None,
        ttl: float = 12.0,
    ) -> bool:
        """Hash, in the background, the files of ``folder`` the upload ``kept`` names (see
        :func:`finish`), renewing the run's :func:`mark` every ``ttl / 4`` seconds until the
        hashes are recorded; False when there is nothing to hash. Never raises, never waits."""
        if kept is None or not pending(kept):
            return False
        if not folder.is_dir():
            self._unmark(store, run_id)
            return False
        with self._lock:
            if self._pid != os.getpid():  # (daemon threads: a process exits without waiting)
                self._pid, self._queue, self._busy, self._marks = os.getpid(), queue.Queue(), 0, {}
                for target in (self._serve, self._renew):
                    threading.Thread(target=target, args=(self._queue,), name="ca-digest",
                                     daemon=True).start()  # fmt: skip
            self._busy += 1
            if store is not None:
                self._marks[run_id] = (store, ttl)
            self._queue.put((store, run_id, folder, dict(kept)))
        return True

    def busy(self) -> int:
        """Runs whose kept files are being hashed or wait for it, in this process."""
        with self._lock:
            return self._busy if self._pid == os.getpid() else 0

    def wait(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for the runs being hashed here; returns how many are
        left (their marks expire: who waits for their hashes stops waiting)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.busy() and (left := deadline - time.monotonic()) > 0:
                self._lock.wait(left)
            return self.busy()

    def _serve(self, work: queue.Queue[tuple[Any, ...]]) -> None:
        while True:
            store, run_id, folder, kept = work.get()
            try:
                finish(store, run_id, folder, kept)
            finally:
                with self._lock:
                    self._busy -= 1
                    self._marks.pop(run_id, None)
                    self._lock.notify_all()
                self._unmark(store, run_id)

    def _renew(self, _work: queue.Queue[tuple[Any, ...]]) -> None:
        while True:
            with self._lock:
                marks = dict(self._marks)
            for run_id, (store, ttl) in marks.items():
                ms = _ms(ttl)
                _write(store, run_id, "renew", lambda r, key: r.pexpire(key, ms))  # noqa: B023
            time.sleep(min([ttl / 4 for _, ttl in marks.values()], default=1.0))

    @staticmethod
    def _unmark(store: RunStore | None, run_id: str) -> None:
        if store is not None:
            _write(store, run_id, "remove", lambda r, key: r.delete(key))


DIGESTS = Digests()  #: this process's hashing
