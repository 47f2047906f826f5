"""A missing entry is said at once: by the CLI before anything is queued, and by the worker
right after the source is ready, before any environment is built."""

from __future__ import annotations

import os
import uuid

import pytest
from conftest import git

from celery_agent import submit
from celery_agent.cli import EXIT_ERROR, main

pytestmark = pytest.mark.integration


def submit_here(repo, *argv: str) -> int:
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        return main(["submit", *argv, "--queue", f"nobody-{uuid.uuid4().hex[:6]}"])
    finally:
        os.chdir(cwd)


def test_cli_refuses_an_entry_that_is_not_in_the_checkout_and_queues_nothing(
    make_repo, store, capsys
):
    repo = make_repo({"train.py": "print('hi')\n", ".gitignore": "secret.py\n"})
    before = [r["run_id"] for r in store.list_runs(5)]
    assert submit_here(repo, "tran.py") == EXIT_ERROR
    err = capsys.readouterr().err
    assert "entry 'tran.py' is not in" in err and "check the path" in err
    (repo / "secret.py").write_text("print('ignored')\n")
    assert submit_here(repo, "secret.py") == EXIT_ERROR
    assert "ignored by git" in capsys.readouterr().err
    (repo / "new.py").write_text("print('new')\n")
    assert submit_here(repo, "new.py", "--no-diff") == EXIT_ERROR
    assert "it is not committed" in capsys.readouterr().err
    assert [r["run_id"] for r in store.list_runs(5)] == before
    (repo / "train.py").unlink()
    assert submit_here(repo, "train.py") == EXIT_ERROR, "deleted in the working copy"
    assert [r["run_id"] for r in store.list_runs(5)] == before


def test_cli_accepts_an_untracked_entry_that_travels_in_the_diff(make_repo, store, capsys):
    repo = make_repo({"train.py": "print('hi')\n"})
    (repo / "sub").mkdir()
    (repo / "sub" / "new.py").write_text("print('new')\n")
    assert submit_here(repo, "sub/new.py") == 0
    run_id = store.list_runs(1)[0]["run_id"]
    assert store.get(run_id)["spec"]["entry"] == "sub/new.py"
    assert main(["cancel", run_id]) == 0


def test_worker_fails_a_missing_entry_in_the_source_stage_before_building_the_env(
    worker, make_repo, store, wheelhouse
):
    repo = make_repo({"train.py": "print('hi')\n"})
    git(repo, "rm", "-q", "train.py")
    git(repo, "commit", "-qm", "gone")
    run = submit({"repo": str(repo), "entry": "train.py", "queue": worker.queues,
                  "requirements": ["cademo"], "find_links": [str(wheelhouse)]})  # fmt: skip
    out = run.result.get(timeout=120)
    assert out["status"] == "failed" and out["error_stage"] == "source", out
    assert "entry 'train.py' does not exist" in out["error"]
    assert "env" not in out["timings"] and not store.get(run.id).get("env_key")
