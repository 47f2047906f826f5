"""How a run is sent: the one place that names the run task and its message options.

Every run is the one Celery task :data:`RUN_TASK`; its id is the run id. The first send
(``submit_task.apply_async``) and a re-queue (:func:`.requeue.celery_resend`) both take their
options here:

- ``queue``: the spec's queue (a re-queue uses the queue the run was recorded on);
- ``priority``: unset on the first send of a normal run (``task_default_priority``), the spec's
  ``priority`` as the broker orders it for a low or high one, the broker's re-queue priority
  on a re-queue (:func:`.defaults.requeue_priority`: 0 on Redis, the highest on RabbitMQ), so a run
  whose worker died goes ahead of the runs that never started;
- ``shadow``: the name Flower and events show (:func:`display_name`), since all runs share one
  task name;
- ``argsrepr``: a short, secret-free view of the arguments (:func:`args_repr`), never the diff,
  the environment or credentials in the repo URL;
- ``ignore_result``: unset (None), so the worker decides who writes the run's Celery result (see
  :mod:`.tasks`); a sender that asks for none gets none.
"""

from __future__ import annotations

from typing import Any

from .defaults import message_priority, requeue_priority
from .gitcmd import redact
from .spec import TaskSpec

#: the Celery task every run is sent as
RUN_TASK = "celery_agent.run"
#: longest argsrepr sent; Flower shows it in one table cell
MAX_REPR = 240


def display_name(spec: TaskSpec) -> str:
    """The name Flower shows for a run: ``run: <name or entry> [<queue>]``."""
    return f"run: {spec.name or spec.entry} [{spec.queue}]"


def args_repr(spec: TaskSpec) -> str:
    """A short, secret-free view of a run's arguments: repo, revision, entry and params.

    Never the diff, the environment or credentials in the repo URL.
    """
    revision = (spec.commit or "")[:12] or spec.branch or "HEAD"
    parts = [f"repo={redact(spec.repo)!r}", f"commit={revision!r}", f"entry={spec.entry!r}"]
    if spec.params:
        parts.append(f"params={spec.params!r}")
    if spec.diff:
        parts.append("+diff")
    text = "(" + ", ".join(parts) + ")"
    return text if len(text) <= MAX_REPR else text[: MAX_REPR - 1] + "…"


def first_send(
    spec: TaskSpec, options: dict[str, Any], task_ignores_result: bool, broker_url: str = ""
) -> None:
    """Fill in the options of a run's first send that its caller left out (in place): queue,
    priority (a low or high run's), shadow, argsrepr, and ``ignore_result`` unset unless the task
    itself ignores results."""
    options.setdefault("queue", spec.queue)
    if spec.priority:
        options.setdefault("priority", message_priority(spec.priority, broker_url))
    options.setdefault("shadow", display_name(spec))
    options.setdefault("argsrepr", args_repr(spec))
    if "ignore_result" not in options and not task_ignores_result:
        options["ignore_result"] = None


def resend(app: Any, run_id: str, fields: dict[str, Any], queue: str) -> None:
    """Send run ``run_id`` again through ``app``: same id, the spec's stored (masked) ``fields``,
    on ``queue``, at the broker's re-queue priority."""
    spec = TaskSpec.parse(fields)
    app.send_task(
        RUN_TASK, args=[fields], task_id=run_id, queue=queue,
        priority=requeue_priority(str(app.conf.broker_url or "")),
        shadow=display_name(spec), argsrepr=args_repr(spec), ignore_result=None,
    )  # fmt: skip
