"""`celery-agent status` shows each worker's artifact store check: ok, or why it cannot write."""

from __future__ import annotations

from rich.console import Console

from celery_agent.cli_status import status_view
from celery_agent.status import worker_row

WORKER = {"name": "w1@h", "hostname": "h", "state": "online", "queues": ["q"], "gpus": [],
          "runs": [], "started_at": 1000.0}  # fmt: skip


def render(*records: dict) -> str:
    console = Console(width=250, record=True)
    rows = [worker_row(r, now=1010.0) for r in records]
    console.print(status_view({"workers": rows, "gpus": []}))
    return console.export_text()


def test_a_store_that_cannot_be_written_is_shown_with_its_reason():
    reason = "bucket 'b' does not exist (NoSuchBucket); create it, or set artifact_root ..."
    broken = WORKER | {"name": "w2@h", "artifact_store": {"root": "s3://b/x", "ok": False,
                                                          "error": reason}}  # fmt: skip
    fine = WORKER | {"artifact_store": {"root": "file:///a", "ok": True, "error": None}}
    text = render(fine, broken, WORKER | {"name": "w3@h"})
    assert "artifacts" in text and "ok" in text and "cannot write" in text
    assert f"w2@h: artifact store: {reason}" in text
    assert "w1@h: artifact store" not in text and "w3@h: artifact store" not in text
