"""How a run is sent: the names Flower shows, and the options of the first send and a re-queue."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from celery_agent import dispatch
from celery_agent.defaults import AMQP_MAX_PRIORITY, REQUEUE_PRIORITY
from celery_agent.dispatch import MAX_REPR, args_repr, display_name
from celery_agent.spec import TaskSpec

SPEC = TaskSpec(
    repo="https://user:tok-123@example.com/me/exp.git",
    commit="0123456789abcdef0123",
    entry="train.py",
    params={"lr": 0.1},
    env={"WANDB_API_KEY": "key-456"},
    diff="--- a/x\n+++ b/x\n+secret-line\n",
    queue="gpu0",
)


def test_display_name_shows_name_or_entry_and_queue():
    assert display_name(SPEC) == "run: train.py [gpu0]"
    assert display_name(SPEC.model_copy(update={"name": "baseline"})) == "run: baseline [gpu0]"


def test_args_repr_is_short_and_holds_no_secret():
    text = args_repr(SPEC)
    assert "'0123456789ab'" in text and "train.py" in text and "'lr': 0.1" in text
    assert "+diff" in text
    for secret in ("tok-123", "key-456", "secret-line", "0123456789abc"):
        assert secret not in text
    many = SPEC.model_copy(update={"params": {f"p{i}": i for i in range(100)}})
    assert len(args_repr(many)) == MAX_REPR and args_repr(many).endswith("…")


def test_a_first_send_fills_in_what_its_caller_left_out():
    options: dict[str, Any] = {"queue": "other"}
    dispatch.first_send(SPEC, options, task_ignores_result=False)
    assert options == {"queue": "other", "shadow": display_name(SPEC),
                       "argsrepr": args_repr(SPEC), "ignore_result": None}  # fmt: skip
    asked: dict[str, Any] = {"ignore_result": True}
    dispatch.first_send(SPEC, asked, task_ignores_result=False)
    assert asked["ignore_result"] is True and asked["queue"] == "gpu0"
    quiet: dict[str, Any] = {}
    dispatch.first_send(SPEC, quiet, task_ignores_result=True)
    assert "ignore_result" not in quiet


class SendingApp:
    """What a re-queue asks of the Celery app: its broker URL, and send_task, recorded."""

    def __init__(self, broker_url: str = "redis://localhost:6379/0") -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.conf = SimpleNamespace(broker_url=broker_url)

    def send_task(self, name: str, **options: Any) -> None:
        self.sent.append((name, options))


def test_a_requeue_sends_the_stored_fields_again_first_in_line_under_the_same_id():
    app, fields = SendingApp(), SPEC.to_json()
    dispatch.resend(app, "run-1", fields, "gpu1")
    ((name, options),) = app.sent
    assert name == dispatch.RUN_TASK == "celery_agent.run"
    assert options == {"args": [fields], "task_id": "run-1", "queue": "gpu1",
                       "priority": REQUEUE_PRIORITY, "shadow": display_name(SPEC),
                       "argsrepr": args_repr(SPEC), "ignore_result": None}  # fmt: skip
    shown = options["shadow"] + options["argsrepr"]  # (what Flower and events show)
    assert "key-456" not in shown and "tok-123" not in shown


def test_a_requeue_on_rabbitmq_goes_at_its_highest_priority():
    app = SendingApp("amqp://guest:guest@mq:5672//")
    dispatch.resend(app, "run-1", SPEC.to_json(), "gpu1")
    ((_, options),) = app.sent
    assert options["priority"] == AMQP_MAX_PRIORITY
