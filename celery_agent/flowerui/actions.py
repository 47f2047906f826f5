"""What the run page's buttons do: cancel a run, run it again with edited parameters.

``POST /celery-agent/api/runs/RUN_ID/cancel`` and ``POST /celery-agent/api/runs/RUN_ID/rerun``
(body: JSON ``{"params": {...}, "queue": "..."}``, both optional). Both are protected as Flower's
own API is and need the XSRF token (see :class:`.base.ActionApi`). A rerun is
:func:`celery_agent.rerun.respec`: the commit the run resolved, its package versions pinned, the
params given merged over its own; it needs each secret env value again, which a web request
cannot give, so a run with secrets is refused with the command that reruns it.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from tornado import web

from ..errors import SpecError
from .base import ActionApi
from .run import _find


def _store() -> Any:
    from ..app import get_store

    return get_store()


class CancelApi(ActionApi):
    """Cancel the run: a queued run never starts, a running one is stopped (TERM, grace, KILL)."""

    @web.authenticated
    async def post(self, ref: str) -> None:
        """Ask the run to stop; answers the state it was in."""

        def cancel() -> dict[str, Any]:
            run_id = _find(ref)
            return {"run_id": run_id, "was": _store().request_abort(run_id)}

        await self.answer(cancel)


class RerunApi(ActionApi):
    """Submit the run again with edited params (and another queue, if given)."""

    @web.authenticated
    async def post(self, ref: str) -> None:
        """Submit the new run; answers its id."""
        body = self.request.body.decode() or "{}"
        user = self.current_user if isinstance(self.current_user, str) else None
        await self.answer(lambda: rerun(ref, body, user))


def rerun(ref: str, body: str, user: str | None) -> dict[str, Any]:
    """Parse the request ``body`` and submit the rerun of run ``ref``."""
    from ..handle import submit
    from ..rerun import respec

    edits = _edits(body)
    record = _store().get(_find(ref))
    spec = respec(record, edits.get("params") or {}, queue=edits.get("queue") or None, environ={})
    if user:  # (signed in through Flower's --auth: the rerun is theirs; a name a run cannot
        with contextlib.suppress(SpecError):  # carry leaves it to the submit: this account)
            spec = spec.with_changes(user=user)
    run = submit(spec)
    return {"run_id": run.id, "rerun_of": record["run_id"]}


def _edits(body: str) -> dict[str, Any]:
    try:
        edits = json.loads(body)
    except ValueError as err:
        raise SpecError(f"the rerun request is not JSON: {err}",
                        'send {"params": {"name": value}, "queue": "name"}') from None  # fmt: skip
    if not isinstance(edits, dict) or not isinstance(edits.get("params") or {}, dict):
        raise SpecError("params must be a JSON object of name: value",
                        'send {"params": {"lr": 0.1}}', field="params")  # fmt: skip
    return edits
