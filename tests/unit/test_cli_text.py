"""User text in the CLI's tables prints whole: square brackets are text, not console markup."""

from __future__ import annotations

from rich.console import Console

from celery_agent.cli import outcome_line
from celery_agent.cli_show import record_table
from celery_agent.cli_status import status_view
from celery_agent.serving import QueueCover
from celery_agent.status import worker_row

NAME = "optuna-integration[pytorch_ignite]"


def rendered(renderable) -> str:
    console = Console(record=True, width=200)
    console.print(renderable)
    return console.export_text()


def test_show_prints_bracketed_values_whole_and_says_a_queued_run_has_no_worker():
    record = {"run_id": "r1", "name": NAME, "state": "queued", "queue": "q[1]",
              "submitted_at": 1000.0, "error": "pip: [red]x[/red]"}  # fmt: skip
    cover = QueueCover("q[1]", [], {"gpu[0]": ["w1@h"]})
    text = rendered(record_table(record, cover, now=1042.0))
    assert NAME in text and "pip: [red]x[/red]" in text
    assert "42s in the queue" in text
    assert "no online worker serves queue 'q[1]'; queues served now: gpu[0] (w1@h)" in text


def test_status_prints_bracketed_worker_and_queue_names_whole():
    row = worker_row({"name": "w[1]@h", "hostname": "h", "state": "online",
                      "queues": ["q[x]"], "runs": []}, now=1.0)  # fmt: skip
    text = rendered(status_view({"workers": [row], "gpus": []}))
    assert "w[1]@h" in text and "q[x]" in text


def test_outcome_line_names_state_exit_code_duration_and_error():
    ok = {"run_id": "r1", "state": "succeeded", "exit_code": 0, "submitted_at": 10.0,
          "succeeded_at": 22.5}  # fmt: skip
    assert outcome_line(ok) == "run r1 succeeded (exit 0) in 12.5s"
    bad = {"run_id": "r2", "state": "aborted", "error": "cancelled before it started"}
    assert outcome_line(bad) == "run r2 aborted: cancelled before it started"


def test_show_says_which_env_and_which_torch_build_a_run_got():
    record = {"run_id": "r1", "state": "succeeded", "env_key": "abc123", "env_hit": True,
              "torch_index": {"variant": "cu121", "url": "https://w.example/whl/cu121"}}  # fmt: skip
    text = rendered(record_table(record, None, now=1.0))
    assert "torch index  cu121 (https://w.example/whl/cu121), picked for the worker" in text
    assert "env          abc123 (reused)" in text
    built = rendered(record_table(record | {"env_hit": 0}, None, now=1.0))
    assert "abc123 (built)" in built
