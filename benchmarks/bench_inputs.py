"""Inputs: what handing a run an earlier run's output costs.

Run start: submit -> result of a run that names one input already in the worker's input cache
(``run://`` of a run that kept 1 MiB), against the same run naming none; alternating, median of
N: what resolving the input (its run's record) and finding it cached adds.
Fetch: ``InputCache.fetch`` of a kept file (full: 256 MiB; quick: 8 MiB) and of a folder of 64
files from a local folder store, each checked against its manifest's sha256, against a plain
``fsspec`` ``get`` of the same files followed by a sha256 of each by hand (the same work, none
of ours: no lock, no part folder, no rename), and against the bare ``get``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import fsspec

from celery_agent.inputcache import InputCache
from celery_agent.inputs import resolve

from .context import AGENT_QUEUE, Context
from .report import Row, median

START_TARGET = 0.03  #: seconds a cached input may add to a run's start
FETCH_SLACK = 1.10  #: our fetch may take this many times a plain get + sha256


def run(ctx: Context) -> list[Row]:
    """The run-start row and the fetch rows."""
    return [_run_start(ctx), *(row for files in (1, 64) for row in _fetch(ctx, files))]


def _run_start(ctx: Context) -> Row:
    made = ctx.submit_and_wait(ctx.workload.spec("outputs.py", AGENT_QUEUE, "1", str(2**20)))
    url = f"run://{made['run_id']}/part-0.bin"
    with_input = ctx.workload.spec("outputs.py", AGENT_QUEUE, "0", "0", inputs={"data": url})
    plain = ctx.workload.spec("outputs.py", AGENT_QUEUE, "0", "0")
    ctx.submit_and_wait(with_input)  # (fetched once: every later run finds it cached)
    named, none = [], []
    for _ in range(ctx.n(10, 2)):
        for spec, times in ((with_input, named), (plain, none)):
            t0 = time.perf_counter()
            summary = ctx.submit_and_wait(spec)
            times.append(time.perf_counter() - t0)
            if spec is with_input and not summary["inputs"]["data"]["cached"]:
                raise RuntimeError(f"the input was fetched again: {summary['inputs']}")
    measured, baseline = median(named), median(none)
    name = f"inputs: run start, one cached run:// input vs none, median of {len(named)}"
    return Row(name, measured, baseline, "ms", "diff", f"<= +{START_TARGET * 1000:.0f} ms",
               measured - baseline <= START_TARGET)  # fmt: skip


def _fetch(ctx: Context, files: int) -> list[Row]:
    total = ctx.n(256, 8) * 2**20
    run_dir = ctx.root / f"input-store-{files}" / "runs" / "r1"
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = []
    for i in range(files):
        data = os.urandom(total // files)
        (run_dir / f"part-{i}.bin").write_bytes(data)
        manifest.append({"path": f"part-{i}.bin", "size": len(data),
                         "sha256": hashlib.sha256(data).hexdigest()})  # fmt: skip
    record = {"run_id": "r1", "artifacts": {"root": run_dir.parents[1].as_uri(),
                                            "files": manifest, "count": files}}  # fmt: skip
    url = "run://r1/part-0.bin" if files == 1 else "run://r1/"
    ours, hashed, plain = [], [], []
    for i in range(ctx.n(3, 1)):
        ours.append(_ours(ctx.root / f"inputs-ours-{files}-{i}", url, record))
        hashed.append(_plain(ctx.root / f"inputs-plain-{files}-{i}", run_dir, files, True))
        plain.append(_plain(ctx.root / f"inputs-bare-{files}-{i}", run_dir, files, False))
    shutil.rmtree(run_dir.parents[1], ignore_errors=True)
    measured = median(ours)
    name = f"inputs: fetch {total >> 20} MiB in {files} file(s) from a folder store"
    return [
        Row(f"{name} vs fsspec get + sha256", measured, median(hashed), "s", "ratio",
            f"<= {FETCH_SLACK:.2f}x", measured <= FETCH_SLACK * median(hashed)),
        Row(f"{name} vs fsspec get", measured, median(plain), "s", "ratio", "-", None),
    ]  # fmt: skip


def _ours(cache_root: Path, url: str, record: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    got = InputCache(cache_root).fetch(resolve("data", url, lambda ref: record))
    elapsed = time.perf_counter() - t0
    if got.hit:
        raise RuntimeError("a fresh cache found the input already there")
    shutil.rmtree(cache_root, ignore_errors=True)
    return elapsed


def _plain(dest: Path, run_dir: Path, files: int, hashed: bool) -> float:
    t0 = time.perf_counter()
    fs = fsspec.filesystem("file")
    dest.mkdir(parents=True)
    for i in range(files):
        fs.get(str(run_dir / f"part-{i}.bin"), str(dest / f"part-{i}.bin"))
        if hashed:
            with (dest / f"part-{i}.bin").open("rb") as src:
                hashlib.file_digest(src, "sha256")
    elapsed = time.perf_counter() - t0
    shutil.rmtree(dest, ignore_errors=True)
    return elapsed
