"""Checkpoints: a run's checkpoint folder mirrored to the artifact store while it runs, and put
back into the output folder of the attempt that resumes it.

A run writes its checkpoints under ``$CELERY_AGENT_OUTPUT_DIR/checkpoints/`` (the spec's
``checkpoint_dir`` names another folder under the output folder). :class:`CheckpointSync`, a
thread of the run's own, copies the files that changed (size or mtime) to
``{artifact_root}/runs/{run_id}/{checkpoint_dir}/`` every ``checkpoint_sync`` seconds, and once
more when the run's process has ended (its end, a cancel, a drain), so a run lost with its
machine loses at most that interval. The end of the run uploads the whole output folder to the
same place, so a finished run's checkpoints are where a lost one's are.

Half-written files are never kept as complete: a periodic round takes only files unchanged for
:data:`SETTLE` seconds, copies each to a hidden name in the store and renames it into place only
when the file's size and mtime are the same after the copy; names that start with ``.`` or end
with ``.tmp`` or ``.part`` are never copied. A script should write a checkpoint to a temporary
name and rename it (``os.replace``, atomic): the folder then never shows a half-written
checkpoint under its final name, and the store never gets one.

:func:`resume` is the other half: before a re-queued attempt's entry starts (its worker was
lost, it drained), or a new run made to start from another's checkpoints (``resume_from``,
``celery-agent rerun --resume``), the kept checkpoints are downloaded into its folder, and the
run is told so (``CELERY_AGENT_ATTEMPT``, ``CELERY_AGENT_RESUMED=1``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .artifact_store import makes_folders
from .artifacts import SYNCED, ArtifactStore, excluded, output_files
from .errors import AgentError

logger = logging.getLogger(__name__)

SETTLE = 1.0  #: seconds a file must be unchanged before a periodic round copies it
PARTIAL = (".tmp", ".part")  #: endings of names never copied (files still being written)
ATTEMPT_ENV = "CELERY_AGENT_ATTEMPT"
RESUMED_ENV = "CELERY_AGENT_RESUMED"
DIR_ENV = "CELERY_AGENT_CHECKPOINT_DIR"

#: a file's (size, mtime in ns): what tells a changed file from the copy already kept
Stamp = tuple[int, int]


def partial(rel: str) -> bool:
    """Whether ``rel`` names a file still being written, by its name (hidden, ``*.tmp``, ...)."""
    parts = PurePosixPath(rel).parts
    return any(p.startswith(".") for p in parts) or rel.endswith(PARTIAL)


def scan(folder: Path, prefix: str = "", exclude: Sequence[str] = ()) -> dict[str, Stamp]:
    """The files under ``folder`` that may be kept, with their stamps (``exclude`` globs match
    the path ``prefix/rel``, a path in the output folder)."""
    out: dict[str, Stamp] = {}
    for rel in output_files(folder):
        if partial(rel) or excluded(f"{prefix}/{rel}" if prefix else rel, exclude):
            continue
        try:
            st = (folder / rel).stat()
        except FileNotFoundError:  # renamed away since the walk
            continue
        out[rel] = (st.st_size, st.st_mtime_ns)
    return out


@dataclass
class SyncStats:
    """What a sync kept so far: the record's ``checkpoints`` field."""

    url: str
    dir: str
    interval: float
    files: int = 0
    bytes: int = 0
    uploads: int = 0
    rounds: int = 0
    synced_at: float | None = None
    error: str | None = None

    def record(self) -> dict[str, Any]:
        """The fields as the run record keeps them."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


class CheckpointSync:
    """Mirrors one run's checkpoint folder to its place in the store, from a thread of its own."""

    def __init__(
        self,
        store: ArtifactStore,
        run_id: str,
        folder: Path,
        rel: str,
        *,
        interval: float,
        exclude: Sequence[str] = (),
        baseline: dict[str, Stamp] | None = None,
        settle: float = SETTLE,
        report: Callable[[dict[str, Any]], None] = lambda _: None,
        active: Callable[[], bool] = lambda: True,
        sidecar: Path | None = None,
    ) -> None:
        self.store, self.run_id, self.folder, self.rel = store, run_id, folder, rel
        #: whether this attempt still has the run: one whose claim went to another runner (it
        #: stalled) must not overwrite the checkpoints of the attempt that goes on
        self.active = active
        self.interval, self.exclude, self.settle, self.report = interval, exclude, settle, report
        #: the files as the store has them (restored ones included)
        self.synced: dict[str, Stamp] = dict(baseline or {})
        #: where :meth:`stop` says what the store holds (:data:`.artifacts.SYNCED`), if anywhere
        self.sidecar = sidecar
        url = f"{store.run_url(run_id)}/{rel}"
        self.stats = SyncStats(url=url, dir=rel, interval=interval)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one round at a time
        self._thread: threading.Thread | None = None

    def start(self) -> CheckpointSync:
        """Start the periodic rounds (none when ``interval`` is 0: the last round only)."""
        if self.interval > 0:
            self._thread = threading.Thread(
                target=self._loop, name=f"checkpoints-{self.run_id}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        """End the rounds, then sync once more with every file (the run's process has ended:
        nothing is being written); returns the record's ``checkpoints`` field."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sync(final=True)
        if self.sidecar is not None and self.active() and (self.synced or self.sidecar.exists()):
            self._tell_upload(self.sidecar)  # (a run that kept no checkpoint gets no file)
        return self.stats.record()

    def _tell_upload(self, sidecar: Path) -> None:
        """Write what the store holds now (path in the output folder -> size, mtime, the store's
        key of its copy), so the end's upload copies none of it again; a copy another attempt
        replaced since has another key and is copied."""
        held = {}
        for rel, (size, mtime) in self.synced.items():
            try:
                key = self.store.copy_key(self.store.path(self.run_id, f"{self.rel}/{rel}"))
            except Exception:  # (gone, unreachable: the upload copies it)
                continue
            held[f"{self.rel}/{rel}"] = [size, mtime, key]
        try:
            tmp = sidecar.with_name(sidecar.name + ".tmp")
            tmp.write_text(json.dumps(held))
            os.replace(tmp, sidecar)
        except OSError as err:
            logger.warning("could not write %s: %s", sidecar, err)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sync()

    def sync(self, final: bool = False) -> int:
        """One round: copy what changed, drop from the store what the run deleted; returns the
        number of files copied. Never raises: a failure is the stats' ``error``."""
        with self._lock:
            try:
                return self._round(final)
            except Exception as err:  # the store unreachable, the folder unreadable
                logger.warning("checkpoint sync of %s failed: %s", self.run_id, err)
                self.stats.error = f"{type(err).__name__}: {err}"
                self.report(self.stats.record())
                return 0

    def _round(self, final: bool) -> int:
        if not self.active():
            return 0
        now = time.time_ns()
        seen = scan(self.folder, self.rel, self.exclude)
        changed = [
            rel
            for rel, stamp in seen.items()
            if self.synced.get(rel) != stamp and (final or now - stamp[1] >= self.settle * 1e9)
        ]
        gone = [rel for rel in self.synced if rel not in seen]
        errors = []
        copied = 0
        for rel in changed:
            try:
                copied += self._put(rel, seen[rel])
            except Exception as err:
                errors.append(f"{rel}: {type(err).__name__}: {err}")
        for rel in gone:
            try:
                self.store.fs.rm_file(self.store.path(self.run_id, f"{self.rel}/{rel}"))
            except FileNotFoundError:
                pass
            except Exception as err:
                errors.append(f"{rel}: {type(err).__name__}: {err}")
                continue
            self.synced.pop(rel, None)
        return self._tally(copied, bool(gone), errors)

    def _put(self, rel: str, stamp: Stamp) -> int:
        """Copy one file under a hidden name, then rename it into place if it did not change
        meanwhile (else it is caught by the next round); 1 when kept."""
        remote = self.store.path(self.run_id, f"{self.rel}/{rel}")
        parent, name = remote.rsplit("/", 1)
        hidden = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.part"
        fs = self.store.fs
        if makes_folders(fs):  # (on an object store it would create a missing bucket)
            fs.makedirs(parent, exist_ok=True)
        try:
            fs.put_file(str(self.folder / rel), hidden)
        except BaseException:
            with contextlib.suppress(Exception):  # (a part left by a broken copy)
                fs.rm_file(hidden)
            raise
        try:
            st = (self.folder / rel).stat()
            now = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            now = None
        if now != stamp or not self.active():  # written (or removed) while copied; superseded
            fs.rm_file(hidden)
            return 0
        fs.mv(hidden, remote)
        self.synced[rel] = stamp
        return 1

    def _tally(self, copied: int, removed: bool, errors: list[str]) -> int:
        stats = self.stats
        stats.rounds += 1
        stats.files, stats.bytes = len(self.synced), sum(st[0] for st in self.synced.values())
        stats.uploads += copied
        if copied or removed:
            stats.synced_at = time.time()
        stats.error = errors[0] + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else "") \
            if errors else None  # fmt: skip
        if copied or removed or errors:
            self.report(stats.record())
        return copied


def describe(kept: dict[str, Any]) -> str | None:
    """The run's log line for what its sync kept when it stopped (None: it had nothing)."""
    if kept.get("error"):
        return f"checkpoints: failed ({kept['error']}); {kept.get('files', 0)} file(s) kept"
    if kept.get("files"):
        return f"checkpoints: {kept['files']} file(s), {kept.get('bytes')} bytes at {kept['url']}"
    return None


def restore(
    store: ArtifactStore,
    run_id: str,
    rel: str,
    folder: Path,
    stopped: Callable[[], bool] = lambda: False,
) -> dict[str, Stamp]:
    """Download the checkpoints ``run_id`` kept (``{store}/runs/{run_id}/{rel}/``) into
    ``folder``, each to a hidden name renamed into place; returns the stamps of the files put
    there (empty when it kept none). It stops between two files once ``stopped()`` (a cancel, a
    drain: the run stops before it starts). Raises what the store raises."""
    fs = store.fs
    remote = store.path(run_id, rel)
    if not fs.exists(remote):
        return {}
    out: dict[str, Stamp] = {}
    for path in sorted(fs.find(remote)):
        sub = str(path)[len(remote) :].lstrip("/")
        if not sub or partial(sub):
            continue
        if stopped():
            break
        target = (folder / sub).resolve()
        if folder.resolve() not in target.parents:
            raise AgentError(f"checkpoint {sub!r} of run {run_id} leaves {folder}")
        target.parent.mkdir(parents=True, exist_ok=True)
        hidden = target.with_name(f".{target.name}.restore")
        fs.get_file(path, str(hidden))
        os.replace(hidden, target)
        st = target.stat()
        out[sub] = (st.st_size, st.st_mtime_ns)
    return out


@dataclass
class Resumed:
    """What :func:`resume` did before the entry starts: the variables the run gets, the sync to
    start, and the record's ``resumed`` field (None when nothing was restored)."""

    sync: CheckpointSync | None
    env: dict[str, str] = field(default_factory=dict)
    resumed: dict[str, Any] | None = None


def resume(
    store: ArtifactStore,
    run_id: str,
    *,
    output_dir: Path,
    rel: str,
    attempt: int,
    resume_from: str | None,
    interval: float,
    exclude: Sequence[str] = (),
    note: Callable[[str], None] = lambda _: None,
    report: Callable[[dict[str, Any]], None] = lambda _: None,
    active: Callable[[], bool] = lambda: True,
    stopped: Callable[[], bool] = lambda: False,
) -> Resumed:
    """Restore the checkpoints a run starts from, if any, and make its sync (not started).

    A later attempt starts from its own run's checkpoints (an earlier attempt's), else from
    ``resume_from``'s. A store that fails is noted and the attempt starts without them, unless
    the run was made to resume (``resume_from``, first attempt): then it fails, naming the run.
    """
    folder = output_dir / rel
    sources = ([run_id] if attempt > 1 else []) + ([resume_from] if resume_from else [])
    t0 = time.monotonic()
    baseline: dict[str, Stamp] = {}
    source = None
    for source in sources:
        try:
            baseline = restore(store, source, rel, folder, stopped)
        except Exception as err:
            if source == resume_from and attempt == 1:
                raise AgentError(
                    f"the checkpoints of run {source} could not be restored: {err}",
                    f"check the artifact store {store.url} (setting artifact_root) from this worker",
                ) from None
            note(f"checkpoints: could not restore those of run {source} ({err}); going on")
            continue
        if baseline:
            break
    if resume_from and attempt == 1 and not baseline:
        raise AgentError(
            f"run {resume_from} kept no checkpoints in {store.run_url(resume_from)}/{rel}",
            "resume from a run that wrote files under $CELERY_AGENT_OUTPUT_DIR/" + rel,
        )
    env = {ATTEMPT_ENV: str(attempt), DIR_ENV: str(folder)}
    resumed = None
    if baseline:
        size = sum(stamp[0] for stamp in baseline.values())
        seconds = round(time.monotonic() - t0, 3)
        resumed = {"from": source, "attempt": attempt, "files": len(baseline), "bytes": size,
                   "seconds": seconds}  # fmt: skip
        env[RESUMED_ENV] = "1"
        note(f"checkpoints: restored {len(baseline)} file(s), {size} bytes from run {source} "
             f"into {folder} in {seconds:.3f}s")  # fmt: skip
    elif attempt > 1:
        note(f"checkpoints: attempt {attempt} found none kept; it starts from the beginning")
    own = baseline if source == run_id else {}  # (another run's files are copied to this one's)
    sync = CheckpointSync(store, run_id, folder, rel, interval=interval, exclude=exclude,
                          baseline=own, report=report, active=active,
                          sidecar=output_dir.parent / SYNCED)  # fmt: skip
    return Resumed(sync, env, resumed)
