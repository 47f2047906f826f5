"""Who a run belongs to: user and project from the submitting side, on the spec, grouped."""

from __future__ import annotations

import getpass

import pytest

from celery_agent.errors import SpecError
from celery_agent.rerun import respec
from celery_agent.spec import TaskSpec
from celery_agent.usage import ended_text, group_runs, matches
from celery_agent.users import current_project, current_user, stamp

SPEC = {"repo": "/r", "entry": "t.py"}


def test_user_is_the_variable_else_the_account():
    assert current_user({"CELERY_AGENT_USER": " alice "}) == "alice"
    assert current_user({}) == getpass.getuser()
    with pytest.raises(SpecError, match="CELERY_AGENT_USER 'a b' is not a valid name"):
        current_user({"CELERY_AGENT_USER": "a b"})


def test_project_comes_from_its_variable_or_is_none():
    assert current_project({"CELERY_AGENT_PROJECT": "vision"}) == "vision"
    assert current_project({}) is None
    with pytest.raises(SpecError, match="CELERY_AGENT_PROJECT"):
        current_project({"CELERY_AGENT_PROJECT": "x/y"})


def test_stamp_fills_in_only_what_the_spec_leaves_out():
    env = {"CELERY_AGENT_USER": "bob", "CELERY_AGENT_PROJECT": "nlp"}
    stamped = stamp(TaskSpec.parse(SPEC), env)
    assert (stamped.user, stamped.project) == ("bob", "nlp")
    own = stamp(TaskSpec.parse(SPEC | {"user": "carol", "project": "cv"}), env)
    assert (own.user, own.project) == ("carol", "cv")
    assert stamped.to_json()["user"] == "bob"  # the stored spec keeps it for every re-send


def test_a_spec_refuses_a_user_name_that_cannot_be_a_key():
    with pytest.raises(SpecError) as err:
        TaskSpec.parse(SPEC | {"user": "al ice"})
    assert err.value.field == "user" and "letters, digits" in str(err.value)


def test_a_rerun_belongs_to_who_reruns_it_and_keeps_the_project():
    record = {"run_id": "r1", "spec": SPEC | {"user": "alice", "project": "cv"}}
    again = respec(record)
    assert again.user is None and again.project == "cv"  # the submit stamps the rerunning user
    assert stamp(again, {"CELERY_AGENT_USER": "bob"}).user == "bob"
    assert respec(record, project="nlp").project == "nlp"


def test_runs_group_by_user_and_by_project():
    runs = [
        {"user": "a", "project": "p", "state": "running"},
        {"user": "a", "project": "p", "state": "queued"},
        {"user": "b", "project": "p", "state": "succeeded"},
        {"user": "b", "state": "failed"},
        {"state": "queued"},
    ]
    by_user = group_runs(runs, "user")
    assert [r["user"] for r in by_user] == ["a", "-", "b"]
    assert (by_user[0]["active"], by_user[0]["queued"]) == (1, 1)
    assert ended_text(by_user[2]["ended"]) in ("1 succeeded, 1 failed", "1 failed, 1 succeeded")
    by_project = {r["project"]: r for r in group_runs(runs, "project")}
    assert by_project["p"]["active"] == 1 and by_project["-"]["queued"] == 1
    assert matches(runs[0], "a", None) and not matches(runs[0], "b", None)
    assert not matches(runs[3], None, "p")
