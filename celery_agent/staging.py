"""The inputs stage of a run: each input the spec names resolved (:mod:`.inputs`), fetched into
this machine's input cache (:mod:`.inputcache`), and handed to the run as variables:
``CELERY_AGENT_INPUT_<NAME>`` (its local path) and ``CELERY_AGENT_INPUTS`` (the path of a JSON
file mapping each name to its local path)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .digests import wait_left
from .errors import AgentError, Cancelled
from .inputcache import Fetched, InputCache
from .inputs import MAP_ENV, env_name, field, resolve, uploading
from .lookup import find_run
from .spec import TaskSpec
from .stages import stage_timeout

if TYPE_CHECKING:
    from .pipeline import Job

MAP_FILE = "inputs.json"  #: in the run's folder
UPLOAD_WAIT = 1800.0  #: seconds an input waits for its run's background upload (or the stage's)
POLL = 0.5  #: seconds between looks at a run whose outputs are still uploading
#: the inputs each run of this process holds (shared locks), by run id, until it ends
_held: dict[str, list[Fetched]] = {}


def fetch_inputs(job: Job, spec: TaskSpec) -> dict[str, str]:
    """Bring the run's inputs to this machine (each downloaded once per machine); returns the
    run's variables naming them. Records ``inputs`` (name -> url, path, cached, bytes) and the
    stage's time; a cancel or drain while it downloads ends it within a chunk."""
    if not spec.inputs:
        return {}
    t0 = time.time()
    cache = InputCache(job.ctx.settings.input_cache)
    found: dict[str, Any] = {}
    for name, url in spec.inputs.items():
        try:
            source = resolve(name, url, _lookup(job, name, t0))
            got = cache.fetch(source, job.stops, job.clock.remaining("inputs"))
        except Cancelled:
            job.check_abort()  # (a drain sends the run back to its queue)
            raise
        except AgentError as err:
            err.stage = "inputs"  # (a SpecError would say "submit")
            raise
        _held.setdefault(job.run_id, []).append(got)  # (not evicted before the run ends)
        how = "cached" if got.hit else f"downloaded {got.bytes} bytes in {got.seconds:.1f}s"
        job.note(f"input {name}: {source.url} -> {got.path} ({how})")
        found[name] = {"url": source.url, "path": str(got.path), "cached": got.hit,
                       "bytes": source.size}  # fmt: skip
    _bound(job, cache, found)
    paths = {name: entry["path"] for name, entry in found.items()}
    map_file = job.run_dir / MAP_FILE
    map_file.write_text(json.dumps(paths, indent=1))
    job.timing("inputs", t0)
    job.summary["inputs"] = found
    job.check_abort()
    return {env_name(name): path for name, path in paths.items()} | {MAP_ENV: str(map_file)}


def release(job: Job) -> None:
    """Let go of the run's inputs (at its end): the cache may evict them once no run holds them."""
    for got in _held.pop(job.run_id, []):
        got.release()


def _bound(job: Job, cache: InputCache, found: dict[str, Any]) -> None:
    """Keep the input cache within ``input_cache_max_gb`` after a download."""
    bound = job.ctx.settings.input_cache_max_gb
    if bound is None or all(entry["cached"] for entry in found.values()):
        return
    removed = cache.evict(int(bound * 2**30))
    if removed:
        job.note(f"input cache: {len(removed)} least recently used input(s) evicted")


def _lookup(job: Job, name: str, t0: float) -> Callable[[str], Mapping[str, Any]]:
    return lambda ref: _settled(job, name, ref, t0)


def _settled(job: Job, name: str, ref: str, t0: float) -> Mapping[str, Any]:
    """The record of the run ``ref`` names once its outputs are no longer uploading in the
    background (a pipeline's next step may start before its last step's upload ended) and
    their sha256 are there, or will not come (:func:`.digests.wait_left`: the input is then
    keyed and checked by what the store says of each file)."""
    run_id = find_run(job.store, ref)
    record = job.store.get(run_id)
    if uploading(record):
        job.note(f"input {name}: waiting for the outputs of run {run_id} to finish uploading")
    elif wait_left(record, job.store):
        job.note(f"input {name}: waiting for the sha256 of the outputs of run {run_id}")
    limit = min(UPLOAD_WAIT, job.clock.remaining("inputs") or UPLOAD_WAIT)
    while uploading(record) or wait_left(record, job.store):
        job.check_abort()
        if time.time() - t0 > limit:
            if not uploading(record):  # (the hashes: go on without them)
                break
            raise stage_timeout(
                f"{field(name)}: the outputs of run {run_id} were still uploading after "
                f"{limit:.0f}s", "inputs")  # fmt: skip
        time.sleep(POLL)
        record = job.store.get(run_id)
    return record
