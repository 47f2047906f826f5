"""Background uploads: a run's end waits at most artifact_wait for its upload; one still going is
recorded when it ends, and one a stopping process gives up on is recorded as failed."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from celery_agent import artifacts, uploads
from celery_agent.settings import Settings
from celery_agent.uploads import Uploads


class Records:
    """What a RunStore is asked to write (a stand-in: the integration tests use Redis)."""

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}
        self.lines: list[str] = []
        self.written = threading.Event()

    def update(self, run_id: str, **fields: Any) -> None:
        self.fields |= fields
        self.written.set()

    def append_log(self, run_id: str, lines: list[str]) -> None:
        self.lines += lines


def outputs(tmp_path: Path) -> Path:
    run_dir = tmp_path / "runs" / "r1"
    (run_dir / "output").mkdir(parents=True)
    (run_dir / "output" / "model.pt").write_bytes(b"w" * 1000)
    return run_dir


def test_a_quick_upload_is_waited_for(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, artifact_wait=30.0)
    kept, going = uploads.keep(settings, "r1", outputs(tmp_path), [], uploads=Uploads())
    assert going is None and kept["status"] == "uploaded" and kept["count"] == 1


def test_a_slow_upload_goes_on_and_is_recorded_when_it_ends(tmp_path: Path, monkeypatch) -> None:
    gate, real = threading.Event(), artifacts.upload_run

    def slow(*args: Any) -> dict[str, Any]:
        assert gate.wait(30)
        return real(*args)

    monkeypatch.setattr(artifacts, "upload_run", slow)
    settings, pool, run_dir = (
        Settings(home=tmp_path, artifact_wait=0.05),
        Uploads(),
        outputs(tmp_path),
    )
    kept, going = uploads.keep(settings, "r1", run_dir, [], uploads=pool)
    assert going is not None and kept["status"] == "uploading"
    assert kept["url"].endswith("/runs/r1") and artifacts.describe(kept).startswith(
        "artifacts: uploading"
    )
    records = Records()
    uploads.settle(records, "r1", run_dir / "log.txt", going, 5.0, pool)  # type: ignore[arg-type]
    assert pool.pending() == ["r1"] and not records.written.is_set()
    gate.set()
    assert records.written.wait(30)
    assert records.fields["artifacts"]["status"] == "uploaded"
    assert records.lines == ["[celery-agent] artifacts: 1 file(s), 1000 bytes -> " + kept["url"]]
    assert "artifacts: 1 file(s)" in (run_dir / "log.txt").read_text()
    assert pool.wait(5) == [] and pool.pending() == []


def test_an_upload_still_going_when_the_process_stops_is_recorded_failed(
    tmp_path: Path, monkeypatch
) -> None:
    gate = threading.Event()
    monkeypatch.setattr(artifacts, "upload_run", lambda *a: gate.wait(30) and {})
    settings, pool, run_dir = (
        Settings(home=tmp_path, artifact_wait=0.0),
        Uploads(),
        outputs(tmp_path),
    )
    _, going = uploads.keep(settings, "r1", run_dir, [], uploads=pool)
    assert going is not None
    records = Records()
    uploads.settle(records, "r1", run_dir / "log.txt", going, 5.0, pool)  # type: ignore[arg-type]
    assert pool.wait(0.1) == ["r1"]
    kept = records.fields["artifacts"]
    assert (
        kept["status"] == "failed" and "the worker stopped before the upload ended" in kept["error"]
    )
    assert str(run_dir / "output") in kept["error"], "it says where the outputs still are"
    gate.set()
