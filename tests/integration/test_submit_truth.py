"""Submit tells the truth: a queue nobody serves is said at once and while one waits, a queued
run shows how long it waited, runs are found by name or prefix, exit codes follow outcomes."""

from __future__ import annotations

import time
import uuid

import pytest

from celery_agent import follow, get_run, submit
from celery_agent.app import get_registry
from celery_agent.cli import EXIT_ABORTED, EXIT_ERROR, main
from celery_agent.errors import StateError
from celery_agent.serving import NoWorkerError, NoWorkerWarning, queue_cover
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration


def served(queue: str, timeout: float = 30) -> None:
    """Wait until a worker's heartbeat lists ``queue``."""
    wait_for(
        f"a heartbeat listing queue {queue}",
        lambda: queue_cover(get_registry(), queue).covered,
        timeout,
        every=0.1,
    )


def last_run_id(store) -> str:
    return store.list_runs(1)[0]["run_id"]


def test_submit_to_an_unserved_queue_warns_at_once_naming_the_served_ones(
    worker, make_repo, store, capsys
):
    served(worker.queues)
    repo = make_repo({"train.py": "print('hi')\n"})
    nobody = f"nobody-{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    assert main(["submit", "train.py", "--repo", str(repo), "--queue", nobody]) == 0
    took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert f"no online worker serves queue '{nobody}'" in err, err
    assert worker.queues in err and worker.name in err and took < 5
    run_id = last_run_id(store)
    assert main(["cancel", run_id]) == 0
    assert "it was queued and will not start" in capsys.readouterr().out
    assert store.get(run_id)["state"] == "aborted"


def test_require_worker_refuses_and_queues_nothing(make_repo, store, capsys):
    repo = make_repo({"train.py": "print('hi')\n"})
    nobody = f"nobody-{uuid.uuid4().hex[:6]}"
    before = [r["run_id"] for r in store.list_runs(5)]
    code = main(["submit", "train.py", "--repo", str(repo), "-q", nobody, "--require-worker"])
    assert code == EXIT_ERROR
    assert f"no online worker serves queue '{nobody}'" in capsys.readouterr().err
    assert [r["run_id"] for r in store.list_runs(5)] == before


def test_wait_says_none_online_every_few_seconds_and_honours_its_timeout(
    make_repo, store, capsys, monkeypatch
):
    monkeypatch.setattr(follow, "NOTICE_EVERY", 0.3)
    repo = make_repo({"train.py": "print('hi')\n"})
    nobody = f"nobody-{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    code = main(["submit", "train.py", "--repo", str(repo), "-q", nobody, "--wait",
                 "--wait-timeout", "1.5"])  # fmt: skip
    assert code == EXIT_ERROR and time.monotonic() - t0 < 10
    err = capsys.readouterr().err
    assert err.count(f"waiting for a worker on queue {nobody}, none online") >= 2, err
    assert "stopped waiting" in err and "still queued after 1.5s" in err
    run_id = last_run_id(store)
    notices: list[str] = []
    with pytest.raises(StateError, match="still queued"):
        get_run(run_id).wait(timeout=1.0, notify=notices.append)
    assert notices and nobody in notices[0]
    get_run(run_id).cancel()
    assert main(["logs", "-f", run_id]) == EXIT_ABORTED
    assert f"run {run_id} aborted" in capsys.readouterr().err


def test_python_submit_warns_or_raises_when_no_worker_serves_the_queue(make_repo, store):
    repo = make_repo({"train.py": "print('hi')\n"})
    spec = {"repo": str(repo), "entry": "train.py", "queue": f"nobody-{uuid.uuid4().hex[:6]}"}
    with pytest.raises(NoWorkerError, match="no online worker serves queue"):
        submit(spec, require_worker=True)
    with pytest.warns(NoWorkerWarning, match="no online worker serves queue"):
        run = submit(spec)
    assert run.cover is not None and not run.cover.covered
    assert run.cancel() == "queued"


def test_show_finds_a_run_by_name_prints_brackets_whole_and_says_it_waits(make_repo, store, capsys):
    repo = make_repo({"train.py": "print('hi')\n"})
    name = f"optuna-integration[pytorch_ignite]-{uuid.uuid4().hex[:6]}"
    nobody = f"nobody-{uuid.uuid4().hex[:6]}"
    assert main(["submit", "train.py", "--repo", str(repo), "-q", nobody, "--name", name]) == 0
    run_id = last_run_id(store)
    capsys.readouterr()
    assert main(["show", name]) == 0
    out = capsys.readouterr().out
    assert name in out and run_id in out
    assert "s in the queue" in out and f"no online worker serves queue '{nobody}'" in out
    assert main(["submit", "train.py", "--repo", str(repo), "-q", nobody, "--name", name]) == 0
    second = last_run_id(store)
    capsys.readouterr()
    assert main(["show", name]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "2 runs match" in err and run_id in err and second in err
    for rid in (run_id, second):
        assert main(["cancel", rid[:12]]) == 0


def test_wait_prints_a_final_status_line_when_the_run_succeeds(worker, make_repo, capsys):
    repo = make_repo({"train.py": "print('done here')\n"})
    code = main(["submit", "train.py", "--repo", str(repo), "-q", worker.queues,
                 "--executor", "local", "--wait", "--wait-timeout", "120"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0 and "done here" in captured.out
    assert " succeeded (exit 0) in " in captured.err, captured.err


def test_rerun_by_name_can_require_a_worker(make_repo, store, capsys):
    repo = make_repo({"train.py": "print('hi')\n"})
    name, nobody = f"exp-{uuid.uuid4().hex[:6]}", f"nobody-{uuid.uuid4().hex[:6]}"
    assert main(["submit", "train.py", "--repo", str(repo), "-q", nobody, "--name", name]) == 0
    first = last_run_id(store)
    assert main(["cancel", name]) == 0
    capsys.readouterr()
    assert main(["rerun", name, "--require-worker"]) == EXIT_ERROR
    assert f"no online worker serves queue '{nobody}'" in capsys.readouterr().err
    assert last_run_id(store) == first, "nothing was queued"


def test_an_ambiguous_id_prefix_is_refused_listing_the_candidates(make_repo, store, capsys):
    repo = make_repo({"train.py": "print('hi')\n"})
    stem = f"pfx{uuid.uuid4().hex[:8]}"
    spec = {"repo": str(repo), "entry": "train.py", "queue": f"nobody-{stem}"}
    with pytest.warns(NoWorkerWarning):
        runs = [submit(spec, task_id=f"{stem}-{i}") for i in (1, 2)]
    capsys.readouterr()
    assert main(["logs", stem]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert f"2 runs match '{stem}'" in err and f"{stem}-1" in err and f"{stem}-2" in err
    assert main(["show", f"{stem}-2"]) == 0 and f"{stem}-2" in capsys.readouterr().out
    assert [r.cancel() for r in runs] == ["queued", "queued"]
