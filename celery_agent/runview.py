"""A run as its web page shows it: outcome, timings, spec, packages, resources and artifacts.

Built from the run record alone, which holds the spec masked (secret env values and credentials in
URLs are replaced when the run is recorded, see :meth:`.spec.TaskSpec.masked`): what ``celery-agent
show`` prints, the page shows. The diff is summed up per file (lines added and removed), not sent.
"""

from __future__ import annotations

from typing import Any

from .gitcmd import redact
from .state import QUEUED, TERMINAL

#: spec fields the page lists as they are
SPEC_FIELDS = (
    "entry", "args", "workdir", "branch", "executor", "python", "queue", "gpus", "timeout",
    "requirements", "requirements_file", "extras", "groups", "index_url", "env", "secret_env",
    "max_attempts", "tags",
)  # fmt: skip
#: record fields copied as they are
RECORD_FIELDS = (
    "run_id", "name", "state", "queue", "worker", "host", "user", "project", "attempt", "exit_code",
    "error",
    "error_stage", "last_error", "commit", "submitted_at", "preparing_at", "running_at", "timings",
    "usage", "gpus", "env_key", "env_source", "output_dir", "unused_params",
)  # fmt: skip


def run_view(record: dict[str, Any], now: float) -> dict[str, Any]:
    """The page's data for ``record`` (as :meth:`.state.RunStore.get` returns it)."""
    spec = record.get("spec") if isinstance(record.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    out: dict[str, Any] = {k: record.get(k) for k in RECORD_FIELDS}
    state = record.get("state")
    out["ended_at"] = record.get(f"{state}_at") if state in TERMINAL else None
    out["finished"] = state in TERMINAL
    out["waiting"] = record.get("waiting") if state == QUEUED else None  # (a parked run: why)
    started = record.get("running_at") or record.get("preparing_at")
    out["duration"] = None if not started else max(0.0, (out["ended_at"] or now) - started)
    out["params"] = {"given": spec.get("params") or {}, "resolved": record.get("params") or {}}
    out["spec"] = {k: spec.get(k) for k in SPEC_FIELDS if spec.get(k) not in (None, "", [], {})}
    out["repo"] = redact(str(spec.get("repo") or ""))
    out["diff"] = diff_stat(str(spec.get("diff") or ""))
    out["packages"] = list(record.get("freeze") or [])
    out["artifacts"] = _artifacts(record.get("artifacts"))
    return out


def diff_stat(diff: str) -> dict[str, Any]:
    """Per file of a ``git diff`` text: lines added and removed (``-`` for a binary file)."""
    files: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for line in diff.splitlines():
        if line.startswith("diff --git "):
            parts = line.split(" b/", 1)
            current = {"path": parts[1] if len(parts) == 2 else line[11:], "added": 0, "removed": 0}
            files.append(current)
        elif current is None or line.startswith(("+++ ", "--- ")):
            continue
        elif line.startswith("Binary files") or line.startswith("GIT binary patch"):
            current["binary"] = True
        elif line.startswith("+"):
            current["added"] += 1
        elif line.startswith("-"):
            current["removed"] += 1
    added = sum(f["added"] for f in files)
    removed = sum(f["removed"] for f in files)
    return {"files": files, "added": added, "removed": removed, "bytes": len(diff)}


def _artifacts(kept: Any) -> dict[str, Any] | None:
    """The artifacts the record lists (status, count, bytes, files), the store's URL redacted."""
    if not isinstance(kept, dict):
        return None
    out = {k: kept.get(k) for k in ("status", "count", "bytes", "error", "seconds")}
    out["url"] = redact(str(kept.get("url") or ""))
    out["files"] = [
        {"path": f.get("path"), "size": f.get("size"), "sha256": f.get("sha256")}
        for f in kept.get("files") or []
        if isinstance(f, dict)
    ]
    return out
