"""A run's log in the browser: windows of it as JSON, the whole of it as text, and its new lines
as they come, by server-sent events.

- ``/celery-agent/api/runs/RUN_ID/log``: the tail (``?before=ID`` for the lines before a stream id,
  ``?lines=N``); ``?format=text`` writes the whole log as plain text, read in batches;
- ``/celery-agent/api/runs/RUN_ID/log/stream?after=ID``: an event stream; each event holds the
  new lines (a JSON list) and has the stream id as its id, so a browser that reconnects goes on
  from where it was (``Last-Event-ID``); an ``end`` event comes once the run ended and every line
  is sent. Each follower waits in ``XREAD BLOCK`` from its last id on a thread of its own pool,
  never polls the whole log, and leaves as soon as the browser goes.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

from tornado import iostream, web
from tornado.ioloop import IOLoop

from .. import logview
from ..state import TERMINAL
from .base import JsonApi
from .run import _find

#: seconds a follower's XREAD waits before it looks at the run's state (and the browser)
BLOCK = 2.0
#: followers at once (each holds a thread and a Redis connection while it waits)
FOLLOWERS = 64
_TEXT_BATCH = 1000


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(FOLLOWERS, thread_name_prefix="celery-agent-log")


def _store() -> Any:
    from ..app import get_store

    return get_store()


class LogApi(JsonApi):
    """The tail, an earlier window, or (``format=text``) the whole log."""

    @web.authenticated
    async def get(self, ref: str) -> None:
        """Answer the window the arguments ask for."""
        if self.arg("format") == "text":
            await self._text(ref)
            return
        before, lines = self.arg("before"), int(self.arg("lines") or logview.LINES)

        def read() -> dict[str, Any]:
            run_id = _find(ref)
            if before:
                return logview.before(_store(), run_id, before, lines).to_json()
            return logview.tail(_store(), run_id, lines).to_json()

        await self.answer(read)

    async def _text(self, ref: str) -> None:
        loop = IOLoop.current()
        run_id = await loop.run_in_executor(None, lambda: _find(ref))
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.set_header("Content-Disposition", f'inline; filename="{run_id}.log"')
        after = "-"
        while True:
            entries = await loop.run_in_executor(None, _entries, run_id, after)
            for _, data in entries:
                self.write(str(data.get("l", "")) + "\n")
            await self.flush()
            if len(entries) < _TEXT_BATCH:
                return
            after = f"({entries[-1][0]}"


def _entries(run_id: str, after: str) -> list[Any]:
    store = _store()
    return list(store.r.xrange(store.keys.log(run_id), min=after, max="+", count=_TEXT_BATCH))


class LogStream(JsonApi):
    """New lines as server-sent events, from the last id the browser has."""

    gone = False

    def on_connection_close(self) -> None:
        """The browser left: the follower stops at its next wake-up."""
        self.gone = True

    @web.authenticated
    async def get(self, ref: str) -> None:
        """Follow the log until the run ends and every line is sent, or the browser leaves."""
        loop = IOLoop.current()
        run_id = await loop.run_in_executor(None, lambda: _find(ref))
        after = self.request.headers.get("Last-Event-ID") or self.arg("after") or "0-0"
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        try:
            await self._follow(loop, run_id, after)
        except iostream.StreamClosedError:
            return

    async def _follow(self, loop: IOLoop, run_id: str, after: str) -> None:
        self.write("retry: 2000\n\n")
        await self.flush()
        while not self.gone:
            # the state first: once it says ended, every line is in the stream; read what is left
            ended = await loop.run_in_executor(None, _ended, run_id)
            wait = 0 if ended else BLOCK
            last, lines = await loop.run_in_executor(_pool(), logview.follow, _store(), run_id,
                                                     after, wait)  # fmt: skip
            if lines:
                after = last
                self.write(f"id: {last}\ndata: {json.dumps(lines)}\n\n")
            elif ended:
                self.write("event: end\ndata: {}\n\n")
                await self.flush()
                return
            else:
                self.write(": waiting\n\n")  # (a write to a browser that left raises)
            await self.flush()


def _ended(run_id: str) -> bool:
    store = _store()
    return store.r.hget(store.keys.run(run_id), "state") in TERMINAL
