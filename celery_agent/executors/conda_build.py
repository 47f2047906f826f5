"""Solve and install a conda environment with py-rattler, in a child process of the worker.

Run as ``python conda_build.py REQUEST.json``: a standalone script (standard library and rattler
only, no import of celery_agent) so the child starts in ~0.1 s, its async runtime never lives in a
worker process, and a build past its deadline is stopped by killing the child's process group.

The request names a target ``prefix`` and one of:

- ``{"kind": "solve", "channels": [...], "specs": [...], "platform": "linux-64"}``
- ``{"kind": "pixi", "lock": "path/pixi.lock", "environment": "default", "platform": ...}``
- ``{"kind": "records", "records": [{"name", "version", "build", "url", ...}, ...]}``
  (packages read from a conda-lock.yml: installed exactly, no solve)

On failure it writes ``{"message", "hint"}`` to the request's ``error`` path and exits 2; what was
installed is read back from the prefix's ``conda-meta`` folder.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EXIT_BUILD_ERROR = 2


class BuildFailure(Exception):
    """A build failure with a message naming the problem and a hint naming the fix."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message, hint)
        self.message, self.hint = message, hint


def main(argv: list[str]) -> int:
    """Entry point of the child: read the request, build, write the result or the error."""
    request = json.loads(Path(argv[0]).read_text())
    try:
        asyncio.run(build(request))
    except BuildFailure as exc:
        _write(request["error"], {"message": exc.message, "hint": exc.hint})
        sys.stdout.write(f"error: {exc.message}\n")
        return EXIT_BUILD_ERROR
    return 0


async def build(request: dict[str, Any]) -> None:
    """Resolve the request's records and install them into its prefix."""
    import rattler

    records = await _records(request)
    _say(f"installing {len(records)} conda packages into {request['prefix']}")
    try:
        await rattler.install(
            records,
            request["prefix"],
            cache_dir=Path(request["cache_dir"]),
            show_progress=False,
            execute_link_scripts=False,
        )
    except Exception as exc:
        raise _install_failure(exc) from None


async def _records(request: dict[str, Any]) -> list[Any]:
    kind = request["kind"]
    if kind == "solve":
        return await _solve(request)
    if kind == "pixi":
        return _pixi_records(request)
    return [_record(entry) for entry in request["records"]]


async def _solve(request: dict[str, Any]) -> list[Any]:
    import rattler

    specs, channels = request["specs"], request["channels"]
    _say(f"solving {', '.join(specs)} from {', '.join(channels)} for {request['platform']}")
    try:
        records = await rattler.solve(
            channels,
            specs,
            platforms=[request["platform"], "noarch"],
            virtual_packages=rattler.VirtualPackage.detect(),
            timeout=_timeout(request.get("timeout")),
            timestamp_policy="allow-missing",
        )
    except Exception as exc:
        raise _solve_failure(exc) from None
    for record in sorted(records, key=lambda r: r.name.normalized):
        _say(f"  {record.name.normalized} {record.version} {record.build}")
    return list(records)


def _timeout(seconds: float | None) -> datetime.timedelta | None:
    return None if seconds is None else datetime.timedelta(seconds=float(seconds))


def _solve_failure(exc: Exception) -> BuildFailure:
    name, text = type(exc).__name__, str(exc).strip()
    if name == "SolverError":
        hint = "change or relax the specs named above, or add the channel that has them"
        return BuildFailure(f"the conda environment cannot be solved: {text}", hint)
    if name in ("GatewayError", "FetchRepoDataError", "InvalidChannelError"):
        hint = "check the channel name or URL, and that this worker can reach it"
        return BuildFailure(f"a conda channel could not be read: {text}", hint)
    if name in ("InvalidMatchSpecError", "InvalidPackageNameError", "InvalidVersionSpecError"):
        return BuildFailure(f"a conda spec is not valid: {text}", "write specs like 'numpy>=1.26'")
    return BuildFailure(f"the conda solve failed: {name}: {text}", "see the log above")


def _install_failure(exc: Exception) -> BuildFailure:
    text = f"{type(exc).__name__}: {str(exc).strip()}"
    hint = "check that the package URLs are reachable from this worker and the files are intact"
    return BuildFailure(f"installing the conda packages failed: {text}", hint)


def _pixi_records(request: dict[str, Any]) -> list[Any]:
    import rattler  # platforms must come from the lock file itself, not be built here

    lock = rattler.LockFile.from_path(Path(request["lock"]))
    env = lock.environment(request["environment"])
    if env is None:
        raise BuildFailure(
            f"the lock file has no environment {request['environment']!r}",
            "lock the 'default' environment",
        )
    platform = next((p for p in env.platforms() if p.name == request["platform"]), None)
    records = env.conda_repodata_records_for_platform(platform) if platform else None
    if not records:
        raise BuildFailure(
            f"the lock file has no conda packages for {request['platform']}",
            "add this worker's platform to the lock",
        )
    return list(records)


def _record(entry: dict[str, Any]) -> Any:
    """A RepoDataRecord from a locked package (name, version, build, url, subdir, hashes)."""
    import rattler

    package = rattler.PackageRecord(
        name=entry["name"],
        version=entry["version"],
        build=rattler.BuildString(entry["build"]),
        build_number=int(entry.get("build_number") or 0),
        subdir=entry["subdir"],
        depends=list(entry.get("depends") or []),
        md5=bytes.fromhex(entry["md5"]) if entry.get("md5") else None,
        sha256=bytes.fromhex(entry["sha256"]) if entry.get("sha256") else None,
    )
    file_name = entry["url"].rsplit("/", 1)[-1]
    return rattler.RepoDataRecord(package, file_name, entry["url"], entry.get("channel", ""))


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _write(path: str, data: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(data))


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    # py-rattler's runtime threads can crash interpreter shutdown (seen here: SIGSEGV, or SIGABRT
    # in PyGILState_Release, in ~1 of 5 runs after a finished install): skip finalization.
    os._exit(code)
