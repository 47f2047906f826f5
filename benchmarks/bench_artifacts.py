"""Artifacts: what keeping a run's outputs costs.

Run end: submit -> result of a run that writes 16 files of 64 KiB, its outputs uploaded to the
agent worker's artifact store (the default, a folder under its home), against the same run with
``output_exclude=["*"]`` (the same files written, none uploaded); alternating, median of N. The
same for a run that writes 4 files of 64 MiB (quick: 4 MiB): its end waits for the upload at most
``artifact_wait`` seconds (2 by default), the rest goes on in the background; and how long
after the result the record has the files' sha256 (computed by the worker after the run's end).
Upload: ``ArtifactStore.upload`` of 64 files and of one file (full: 1 GiB each way; quick:
8 MiB) to a local folder store (the copy and its manifest of path, size and mtime: what a run's
end waits for), against a plain ``fsspec`` ``put`` of the same files in the same run; and that
upload followed by the sha256 its worker computes after the run's end (``digests.finish``),
against the put followed by a sha256 of each file by hand (one thread).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import fsspec

from celery_agent import digests
from celery_agent.artifacts import ArtifactStore
from celery_agent.settings import Settings

from .context import AGENT_QUEUE, Context
from .report import Row, median

FILES, SIZE = "16", str(64 * 2**10)
BIG_FILES = "4"  #: files of 64 MiB (quick: 4 MiB) the large run writes
RUN_TARGET = 0.15  #: seconds a run's end may wait for a small upload
BIG_SLACK = 0.5  #: seconds over artifact_wait a run's end may wait for a large upload
COPY_SLACK = 1.10  #: our upload may take this many times a plain fsspec copy


def run(ctx: Context) -> list[Row]:
    """The run-end row and the upload rows."""
    rows = [_run_end(ctx), _big_run_end(ctx)]
    return rows + [row for files in (64, 1) for row in _upload(ctx, files)]


def _run_end(ctx: Context) -> Row:
    kept, skipped, uploads = [], [], []
    ctx.submit_and_wait(ctx.workload.spec("outputs.py", AGENT_QUEUE, FILES, SIZE))  # env built
    for _ in range(ctx.n(10, 2)):
        for exclude, times in (([], kept), (["*"], skipped)):
            spec = ctx.workload.spec("outputs.py", AGENT_QUEUE, FILES, SIZE, output_exclude=exclude)
            t0 = time.perf_counter()
            summary = ctx.submit_and_wait(spec)
            times.append(time.perf_counter() - t0)
            if exclude == []:
                if summary["artifacts"]["status"] != "uploaded":
                    raise RuntimeError(f"upload failed: {summary['artifacts']}")
                uploads.append(float(summary["artifacts"]["seconds"]))
    measured, baseline = median(kept), median(skipped)
    name = (f"artifacts: run end, {FILES} x 64 KiB uploaded vs excluded (upload itself "
            f"{median(uploads) * 1000:.0f} ms), median of {len(kept)}")  # fmt: skip
    return Row(name, measured, baseline, "ms", "diff", f"<= +{RUN_TARGET * 1000:.0f} ms",
               measured - baseline <= RUN_TARGET)  # fmt: skip


def _big_run_end(ctx: Context) -> Row:
    wait = Settings().artifact_wait  # (the agent worker runs with the default)
    kept, skipped, states, hashed = [], [], [], []
    mib = ctx.n(64, 4)
    for _ in range(ctx.n(3, 1)):
        for exclude, times in (([], kept), (["*"], skipped)):
            spec = ctx.workload.spec("outputs.py", AGENT_QUEUE, BIG_FILES, str(mib * 2**20),
                                     output_exclude=exclude)  # fmt: skip
            t0 = time.perf_counter()
            summary = ctx.submit_and_wait(spec)
            times.append(time.perf_counter() - t0)
            if exclude == []:
                states.append(summary["artifacts"]["status"])
                hashed.append(_hashed(ctx, summary["run_id"]) - t0 - times[-1])
    measured, baseline = median(kept), median(skipped)
    name = (f"artifacts: run end, {BIG_FILES} x {mib} MiB uploaded vs excluded (ended as "
            f"{'/'.join(sorted(set(states)))}; their sha256 on the record "
            f"{median(hashed):.2f} s after the result), median of {len(kept)}")  # fmt: skip
    target = f"<= +{(wait + BIG_SLACK) * 1000:.0f} ms"
    return Row(name, measured, baseline, "ms", "diff", target,
               measured - baseline <= wait + BIG_SLACK)  # fmt: skip


def _hashed(ctx: Context, run_id: str, timeout: float = 120) -> float:
    """When (perf_counter) the run's record has the sha256 of all its kept files."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ctx.store.get(run_id)["artifacts"].get("hashes") == digests.COMPLETE:
            return time.perf_counter()
        time.sleep(0.02)
    raise RuntimeError(f"the sha256 of run {run_id} were not on its record after {timeout}s")


def _upload(ctx: Context, files: int) -> list[Row]:
    total = ctx.n(1024, 8) * 2**20
    folder = ctx.root / f"outputs-{files}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (folder / f"part-{i}.bin").write_bytes(os.urandom(total // files))
    ours, plain, with_hashes, hashed = [], [], [], []
    for i in range(ctx.n(3, 1)):
        upload, hashing = _ours(ctx.root / f"store-ours-{files}-{i}", folder)
        ours.append(upload)
        with_hashes.append(upload + hashing)
        plain.append(_plain(ctx.root / f"store-plain-{files}-{i}", folder))
        hashed.append(_plain(ctx.root / f"store-hashed-{files}-{i}", folder, hashed=True))
    shutil.rmtree(folder, ignore_errors=True)
    measured, baseline = median(ours), median(plain)
    name = f"artifacts: upload {total >> 20} MiB in {files} file(s) to a folder"
    return [
        Row(f"{name} vs fsspec put", measured, baseline, "s", "ratio", "<= 1.10x",
            measured <= COPY_SLACK * baseline),
        Row(f"{name}, then its sha256 (after the run's end) vs fsspec put + sha256 by hand",
            median(with_hashes), median(hashed), "s", "ratio", "-", None),
    ]  # fmt: skip


def _ours(root: Path, folder: Path) -> tuple[float, float]:
    """Seconds of the upload, and of the hashing that follows it."""
    store = ArtifactStore(root.as_uri())
    t0 = time.perf_counter()
    out = store.upload("bench", folder)
    t1 = time.perf_counter()
    if out["status"] != "uploaded":
        raise RuntimeError(f"upload failed: {out}")
    if digests.finish(None, "bench", folder, out) != digests.COMPLETE:
        raise RuntimeError("the sha256 of the upload were not computed")
    t2 = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    return t1 - t0, t2 - t1


def _plain(root: Path, folder: Path, hashed: bool = False) -> float:
    t0 = time.perf_counter()
    fs = fsspec.filesystem("file")
    fs.put(str(folder), str(root / "runs" / "bench"), recursive=True)
    for path in sorted(folder.iterdir()) if hashed else ():
        with path.open("rb") as src:
            hashlib.file_digest(src, "sha256")
    elapsed = time.perf_counter() - t0
    shutil.rmtree(root, ignore_errors=True)
    return elapsed
