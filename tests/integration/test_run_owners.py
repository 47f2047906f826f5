"""Whose run it is, through a real worker: the user and project on the record, kept by a re-send,
filtered and grouped by `ls` and `status`, shown by `show`; a rerun is the rerunning user's."""

from __future__ import annotations

import json
import uuid

import pytest

from celery_agent import TaskSpec, submit
from celery_agent.cli import main
from celery_agent.retention import delete_run
from celery_agent.serving import NoWorkerWarning

pytestmark = pytest.mark.integration


def test_runs_record_their_user_and_project_and_the_cli_filters_by_them(
    worker, make_repo, store, capsys, monkeypatch
):
    repo = make_repo({"t.py": "print('hi')\n"})
    spec = {"repo": str(repo), "entry": "t.py", "executor": "local", "queue": worker.queues}
    monkeypatch.setenv("CELERY_AGENT_USER", "alice")
    monkeypatch.setenv("CELERY_AGENT_PROJECT", "vision")
    a = submit(TaskSpec.parse(spec))
    monkeypatch.setenv("CELERY_AGENT_USER", "bob")
    monkeypatch.delenv("CELERY_AGENT_PROJECT")
    b = submit(TaskSpec.parse(spec | {"project": "nlp"}))
    assert (
        a.wait(timeout=120)["state"] == "succeeded" and b.wait(timeout=120)["state"] == "succeeded"
    )
    assert (a.info()["user"], a.info()["project"]) == ("alice", "vision")
    assert (b.info()["user"], b.info()["project"]) == ("bob", "nlp")
    assert a.info()["spec"]["user"] == "alice", "the stored spec (what a re-send sends) keeps it"

    capsys.readouterr()
    assert main(["ls", "--user", "alice", "-n", "50"]) == 0
    listed = capsys.readouterr().out
    assert a.id[:8] in listed and b.id[:8] not in listed
    assert main(["ls", "--project", "nlp", "-n", "50"]) == 0
    listed = capsys.readouterr().out
    assert b.id[:8] in listed and a.id[:8] not in listed
    assert main(["ls", "--by", "user", "-n", "50"]) == 0
    grouped = capsys.readouterr().out
    assert "runs by user" in grouped and "alice" in grouped and "bob" in grouped
    assert main(["show", a.id]) == 0
    shown = capsys.readouterr().out
    assert "alice" in shown and "vision" in shown

    carol = f"carol-{uuid.uuid4().hex[:6]}"  # the session's Redis has other tests' carols
    monkeypatch.setenv("CELERY_AGENT_USER", carol)
    assert main(["rerun", a.id, "--no-pin", "--wait"]) == 0
    again = store.list_runs(1, user=carol)[0]
    assert again["rerun_of"] == a.id and again["project"] == "vision"

    with pytest.warns(NoWorkerWarning):
        blocker = submit(TaskSpec.parse(spec | {"queue": "nobody-serves-this"}))
    capsys.readouterr()
    assert main(["status", "--json", "--user", carol]) == 0
    users = json.loads(capsys.readouterr().out)["users"]
    assert [row["user"] for row in users] == [carol] and users[0]["queued"] == 1
    blocker.cancel()


def test_ls_and_status_find_a_users_runs_behind_thousands_of_others(store, capsys):
    """dora's 3 runs, then 2,100 of erik's: `ls --user dora` still lists hers, and `status` counts
    every queued run of both (it read only the newest 2,000 whole records before)."""
    dora, erik = (f"{name}-{uuid.uuid4().hex[:6]}" for name in ("dora", "erik"))
    queue = f"nobody-{uuid.uuid4().hex[:6]}"
    hers, his = [uuid.uuid4().hex for _ in range(3)], [uuid.uuid4().hex for _ in range(2100)]
    for run_id, user in [(i, dora) for i in hers] + [(i, erik) for i in his]:
        assert store.create_run(run_id, {"repo": "/r", "entry": "t.py"}, queue, user=user)
    try:
        capsys.readouterr()
        assert main(["ls", "--user", dora, "-n", "10"]) == 0
        listed = capsys.readouterr().out
        assert all(run_id[:8] in listed for run_id in hers), listed
        assert main(["status", "--json"]) == 0
        users = {row["user"]: row for row in json.loads(capsys.readouterr().out)["users"]}
        assert users[dora]["queued"] == 3 and users[erik]["queued"] == 2100
    finally:  # (no other test of the session's Redis should meet 2,103 queued runs)
        for run_id in hers + his:
            store.transition(run_id, "aborted")
            delete_run(store, run_id)
