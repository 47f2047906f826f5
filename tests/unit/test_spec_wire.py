"""How a TaskSpec travels in Celery messages and results: as its plain fields, read back as data
(the worker parses the spec it runs, once), and what an earlier version's envelope reads as."""

from __future__ import annotations

import json

from kombu.utils.json import dumps, loads

from celery_agent import TaskSpec
from celery_agent.app import app  # noqa: F401 - registers the spec's JSON form


def test_a_spec_is_sent_as_its_fields_and_read_back_as_data():
    spec = TaskSpec(repo="https://example.org/r.git", entry="train.py", params={"lr": 0.1})
    text = dumps({"args": [spec]})
    assert json.loads(text) == {
        "args": [{"repo": "https://example.org/r.git", "entry": "train.py", "params": {"lr": 0.1}}]
    }
    back = loads(text)["args"][0]
    assert type(back) is dict and TaskSpec.parse(back) == spec


def test_an_enveloped_spec_from_an_earlier_version_reads_as_its_fields():
    fields = {"repo": "r", "entry": "a.py", "queue": "q1"}
    text = json.dumps([{"__type__": "celery_agent.TaskSpec", "__value__": fields}])
    assert loads(text) == [fields]
    assert TaskSpec.parse(loads(text)[0]).queue == "q1"


def test_what_the_stored_arguments_would_mask_is_told_without_parsing():
    assert TaskSpec.masks_nothing({"repo": "https://example.org/r.git", "entry": "a.py"})
    assert not TaskSpec.masks_nothing({"repo": "https://u:tok@example.org/r.git", "entry": "a.py"})
    assert not TaskSpec.masks_nothing({"repo": "r", "entry": "a.py", "env": {"K": "v"},
                                "secret_env": ["K"]})  # fmt: skip
    assert not TaskSpec.masks_nothing("not a spec") and not TaskSpec.masks_nothing(
        {"entry": "a.py"}
    )
