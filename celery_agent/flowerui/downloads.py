"""Artifact downloads: ``/celery-agent/api/runs/RUN_ID/artifacts/PATH`` streams one file the run
kept in the artifact store, through Flower (its auth applies), in chunks.

Only a path the run's manifest lists is served (no other file of the store can be named).
"""

from __future__ import annotations

import mimetypes
from typing import Any

from tornado import web
from tornado.ioloop import IOLoop

from ..errors import AgentError, UnknownRunError
from .base import JsonApi
from .run import _find

CHUNK = 1 << 20


def _open(ref: str, path: str) -> tuple[Any, dict[str, Any]]:
    from ..app import get_store
    from ..artifacts import of_run

    record = get_store().get(_find(ref))
    store, files = of_run(record)
    entry = next((f for f in files if f.get("path") == path), None)
    if entry is None:
        raise UnknownRunError(f"run {record['run_id']} kept no artifact {path!r}",
                              "see the run page's artifacts list")  # fmt: skip
    return store.open_file(record["run_id"], path), entry


class ArtifactFile(JsonApi):
    """One artifact file, streamed."""

    @web.authenticated
    async def get(self, ref: str, path: str) -> None:
        """Write the file (404 when the run's manifest has no such path)."""
        loop = IOLoop.current()
        try:
            src, entry = await loop.run_in_executor(None, _open, ref, path)
        except AgentError as err:  # an unknown run or path, or a run that kept no files
            self.send({"error": err.message, "hint": err.hint or ""}, 404)
            return
        kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
        self.set_header("Content-Type", kind)
        self.set_header("Content-Length", str(entry.get("size") or 0))
        self.set_header("Content-Disposition", f'attachment; filename="{path.rsplit("/", 1)[-1]}"')
        try:
            while chunk := await loop.run_in_executor(None, src.read, CHUNK):
                self.write(chunk)
                await self.flush()
        finally:
            src.close()
