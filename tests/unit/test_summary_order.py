"""A run's summary leads with what its short previews (Celery's worker log, the task-succeeded
event, Flower's result column: the repr cut at 256 characters) should show."""

from __future__ import annotations

from celery.utils.saferepr import saferepr

from celery_agent.stages import LEADS, leading


def summary(**extra: object) -> dict[str, object]:
    return {"run_id": "r" * 36, "status": "failed", "worker": "celery@gpu-box-7",
            "timings": {"source": 0.01, "env": 0.2, "run": 12.5, "total": 12.8},
            "commit": "c" * 40, "params": {"lr": 0.1, "epochs": 30}, "log_tail": ["x" * 80] * 5,
            "exit_code": 3, "output_dir": "/data/runs/r/output"} | extra  # fmt: skip


def test_status_exit_code_and_error_come_first_and_nothing_is_lost():
    before = summary(error="the run exited with code 3", error_stage="run")
    after = leading(before)
    assert after == before
    assert list(after)[:6] == ["run_id", "status", "exit_code", "error", "error_stage", "worker"]
    assert list(after)[-3:] == ["timings", "params", "log_tail"], "the rest keep their order"


def test_the_cut_preview_shows_why_a_run_failed():
    preview = saferepr(leading(summary(error="the run exited with code 3")), 256)
    assert "'exit_code': 3" in preview and "the run exited with code 3" in preview
    assert "the run exited" not in saferepr(summary(error="the run exited with code 3"), 256)


def test_leads_name_only_summary_fields():
    assert set(LEADS) <= set(summary(error="e", error_stage="run"))
