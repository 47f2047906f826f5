"""Uploads that outlive a run's end, so large outputs do not hold the worker's next run.

A run's end starts its upload (:func:`.artifacts.upload_run`) on a thread of this process and waits
for it at most ``artifact_wait`` seconds. An upload done by then goes on the run's final write and
its Celery result as before. One that is not ends the run with ``artifacts.status = "uploading"``
and goes on in the background; when it ends, its outcome (uploaded, or failed with the reason)
replaces that on the run record and the run's log says so (:func:`settle`); the sha256 of its
files follow (:mod:`.digests`). A pool process that
exits (the worker stops or drains) waits for its uploads first, for at most ``drain_grace``
seconds; one still going then is recorded as failed, naming where the outputs still are.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import artifacts, digests
from .notes import open_log
from .settings import Settings
from .stages import with_retry
from .state import RunStore

logger = logging.getLogger(__name__)

TAG = "[celery-agent]"
THREADS = 4  #: runs uploading at once in one process


class Uploads:
    """The uploads of this process: started, waited for, and still going."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0  #: the process the pool belongs to (a forked child makes its own)
        self._pending: dict[str, tuple[Future[dict[str, Any]], Callable[[str], None]]] = {}

    def start(self, upload: Callable[[], dict[str, Any]]) -> Future[dict[str, Any]]:
        """Run ``upload`` on a thread; the future gives its result."""
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="ca-upload")
                self._pid, self._pending = os.getpid(), {}
            return self._pool.submit(upload)

    def follow(
        self, run_id: str, future: Future[dict[str, Any]], on_end: Callable[[str], None]
    ) -> None:
        """Note ``future`` as the background upload of ``run_id``; should the process exit
        before it ends, ``on_end(reason)`` is called instead of its result (see :meth:`wait`)."""
        with self._lock:
            self._pending[run_id] = (future, on_end)
        future.add_done_callback(lambda _: self._forget(run_id, future))

    def _forget(self, run_id: str, future: Future[dict[str, Any]]) -> None:
        with self._lock:
            if run_id in self._pending and self._pending[run_id][0] is future:
                del self._pending[run_id]

    def pending(self) -> list[str]:
        """The runs whose outputs are still uploading in the background here."""
        with self._lock:
            return sorted(self._pending) if self._pid == os.getpid() else []

    def wait(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` seconds for the background uploads; those still going are
        given up (each one's ``on_end`` says why); returns their run ids."""
        with self._lock:
            pending = dict(self._pending) if self._pid == os.getpid() else {}
        if not pending:
            return []
        logger.warning("waiting up to %.0fs for %d upload(s) of outputs: %s", timeout,
                       len(pending), ", ".join(sorted(pending)))  # fmt: skip
        wait_futures([future for future, _ in pending.values()], timeout=timeout)
        left = sorted(run_id for run_id, (future, _) in pending.items() if not future.done())
        for run_id in left:
            pending[run_id][1](f"the worker stopped before the upload ended ({timeout:g}s)")
        return left


UPLOADS = Uploads()  #: this process's uploads


@dataclass
class Going:
    """An upload that goes on after its run's end, and what ends its mark in Redis."""

    future: Future[dict[str, Any]]
    unmark: Callable[[], None]
    ttl: float = 12.0  #: of the marks in Redis (``claim_ttl``)


def keep(
    settings: Settings, run_id: str, run_dir: Path, exclude: list[str],
    store: RunStore | None = None, uploads: Uploads = UPLOADS,
) -> tuple[dict[str, Any], Going | None]:  # fmt: skip
    """Upload a run's outputs, waiting ``settings.artifact_wait`` seconds at most: (what the run
    record keeps now, the upload still going or None). One still going is marked in ``store``
    before the run's end is written, the mark renewed every ``claim_ttl / 4`` seconds: should
    this process die, it expires and the sweep records the upload failed (:func:`reap`).
    Never raises."""
    future = uploads.start(lambda: artifacts.upload_run(settings, run_dir, exclude))
    try:
        kept = future.result(timeout=max(settings.artifact_wait, 0.0))
    except TimeoutError:
        unmark = _mark(store, run_id, settings.claim_ttl) if store is not None else _nothing
        return artifacts.uploading(settings, run_id), Going(future, unmark, settings.claim_ttl)
    digests.mark(store, run_id, kept, settings.claim_ttl)  # (hashed once the end is written)
    return kept, None


def settle(
    store: RunStore, run_id: str, log_file: Path, going: Going, retry_for: float,
    uploads: Uploads = UPLOADS,
) -> None:  # fmt: skip
    """When the background upload ``going`` of an ended run ends, put its outcome on the run
    record (``artifacts``) and a line in its log, and remove its mark; call it after the run's
    final write."""
    started, once = time.time(), threading.Lock()  # (given up, or ended: whichever comes first)
    future, unmark = going.future, going.unmark

    def record(kept: dict[str, Any]) -> None:
        if not once.acquire(blocking=False):
            return
        line = artifacts.describe(kept)
        try:  # the log first: who sees the record change finds the line there
            if line:
                with open_log(log_file) as out:
                    out.write(f"{TAG} {line}\n")
                store.append_log(run_id, [f"{TAG} {line}"])
        except Exception as err:  # the record says it all; the log line is a courtesy
            logger.warning("could not log the upload of %s: %s", run_id, err)
        digests.mark(store, run_id, kept, going.ttl)  # (before the record says "pending")
        with_retry(lambda: store.update(run_id, artifacts=kept), run_id, retry_for)
        unmark()
        digests.DIGESTS.start(store, run_id, log_file.parent / "output", kept, going.ttl)
        logger.info("run %s: %s", run_id, line)

    def given_up(reason: str) -> None:
        where = f"{log_file.parent / 'output'} on {socket.gethostname()}"
        record(artifacts.failed(f"{reason}; the outputs are still in {where}", store_url=None)
               | {"seconds": round(time.time() - started, 3)})  # fmt: skip

    def done(f: Future[dict[str, Any]]) -> None:
        try:
            record(f.result())
        except Exception as err:  # (a bug: upload_run never raises)
            logger.exception("recording the upload of %s failed: %s", run_id, err)

    uploads.follow(run_id, future, given_up)
    future.add_done_callback(done)


def reap(store: RunStore) -> list[str]:
    """Runs whose background upload stopped without a word (the process doing it died: its mark
    expired): their record says ``artifacts: failed``, naming where the outputs still are. For
    the sweep; returns their run ids."""
    ids = sorted(store.r.smembers(store.keys.uploads()))
    pipe = store.r.pipeline(transaction=False)
    for run_id in ids:
        pipe.exists(store.keys.upload(run_id))
    dead = [run_id for run_id, alive in zip(ids, pipe.execute(), strict=True) if not alive]
    failed = []
    for run_id in dead:
        record = store.r.hmget(store.keys.run(run_id), "artifacts", "output_dir", "host")
        kept = json.loads(record[0]) if record[0] else {}
        if kept.get("status") == "uploading":
            why = (f"the upload stopped with the worker process doing it; the outputs are still "
                   f"in {record[1]} on {record[2]}")  # fmt: skip
            store.update(run_id, artifacts=artifacts.failed(why, kept.get("root")))
            failed.append(run_id)
        store.r.srem(store.keys.uploads(), run_id)
    return failed


def _nothing() -> None:
    return None


def _mark(store: RunStore, run_id: str, ttl: float) -> Callable[[], None]:
    """Mark the run's upload as going on (a key with a TTL of ``ttl``, renewed by a thread every
    quarter of it); returns what ends the mark. Redis being away is logged, never raised."""
    key, done, ms = store.keys.upload(run_id), threading.Event(), max(1, int(ttl * 1000))

    def write(what: Callable[[Any], object], doing: str) -> None:
        try:
            pipe = store.r.pipeline(transaction=True)
            what(pipe)
            pipe.execute()
        except Exception as err:
            logger.warning("could not %s the upload mark of %s: %s", doing, run_id, err)

    def renew() -> None:
        while not done.wait(ttl / 4):
            write(lambda pipe: pipe.pexpire(key, ms), "renew")

    holder = f"{socket.gethostname()}|{os.getpid()}"
    write(lambda pipe: pipe.set(key, holder, px=ms).sadd(store.keys.uploads(), run_id), "set")
    threading.Thread(target=renew, name="ca-upload-mark", daemon=True).start()

    def unmark() -> None:
        done.set()
        write(lambda pipe: pipe.srem(store.keys.uploads(), run_id).delete(key), "remove")

    return unmark
