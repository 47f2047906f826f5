"""Status data and its rendering: GPU rows merged from heartbeats, bars, sparklines."""

from __future__ import annotations

from rich.console import Console

from celery_agent.cli_status import bar, history_view, sparkline, status_view
from celery_agent.status import gpu_rows, worker_row

UUID = "GPU-aaaa"
ONLINE = {
    "name": "w1@h", "hostname": "h", "state": "online", "queues": ["gpu0"], "gpu_mode": "static",
    "gpus": [{"index": 0, "uuid": UUID, "name": "H200", "memory_total": 100}],
    "runs": ["run-1"], "started_at": 1000.0, "leases": {UUID: "w1@h/run-1"},
    "snapshot": {"host": {"cpu_percent": 12.5}, "gpus": [
        {"uuid": UUID, "util": 40, "memory_used": 25, "memory_total": 100, "processes": []},
        {"uuid": "GPU-other", "util": 0}]},
}  # fmt: skip


def test_gpu_rows_show_owned_gpus_with_live_metrics_and_lease():
    (row,) = gpu_rows([ONLINE, {"name": "gone", "state": "lost"}])
    assert row["uuid"] == UUID and row["util"] == 40 and row["memory_used"] == 25
    assert row["workers"] == ["w1@h"] and row["lease"] == "w1@h/run-1" and row["processes"] == 0


def test_unbound_worker_shows_every_gpu_of_its_machine():
    rows = gpu_rows([ONLINE | {"gpus": []}])
    assert {r["uuid"] for r in rows} == {UUID, "GPU-other"} and rows[0]["workers"] == []


def test_worker_row_has_uptime_only_while_online():
    assert worker_row(ONLINE | {"last_seen": 1}, now=1090.0)["uptime"] == 90.0
    assert worker_row({"name": "x", "state": "stopped"}, now=5.0)["uptime"] is None


def test_bars_and_sparklines():
    assert bar(50, 100, width=10) == "█████░░░░░  50%" and bar(None, 100) == "-"
    assert sparkline([0, 50, 100, None], 100.0) == "▁▄█ "
    assert sparkline([], None) == ""


def test_views_render_without_error():
    console = Console(record=True, width=160)
    data = {"workers": [worker_row(ONLINE, 1100.0)], "gpus": gpu_rows([ONLINE])}
    console.print(status_view(data))
    hist = {"worker": "w1@h", "history": [{"t": 1, "cpu": 10, "mem": 20, "load": 0.5,
            "gpus": [{"uuid": UUID, "util": 30, "mem": 10, "mem_total": 100}]}]}  # fmt: skip
    console.print(history_view(hist))
    text = console.export_text()
    assert "w1@h" in text and "run-1" in text and "40%" in text and "util %" in text


def test_show_prints_a_runs_gpu_memory_summary():
    from celery_agent.cli_show import gpu_memory_line

    usage = {"gpu_memory_peak_bytes": 3 * 2**30, "gpu_memory_mean_bytes": 2**30, "gpu_samples": 4}
    assert gpu_memory_line(usage) == "peak 3.00 GiB, mean 1.00 GiB (4 samples)"
