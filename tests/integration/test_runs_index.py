"""The runs table's query on a real Redis: the per-tag, user and queue indexes written at
submit, completed for runs recorded before them, and walked instead of every run."""

from __future__ import annotations

import uuid

import pytest

from celery_agent.runindex import RunQuery, complete_indexes, page

pytestmark = pytest.mark.integration


def test_a_tag_filter_walks_the_tags_index_once_it_is_complete(store):
    tag = f"t{uuid.uuid4().hex[:8]}"
    ids = [f"idx-{tag}-{i}" for i in range(3)]
    for i, run_id in enumerate(ids):
        spec = {"entry": "t.py", "repo": "/r", "tags": [tag] if i != 1 else [tag, "other"]}
        assert store.create_run(run_id, spec, "q-idx", user="erin")
    for i in range(20):  # runs of other tags, newer
        store.create_run(f"idx-{tag}-x{i}", {"entry": "t.py", "repo": "/r", "tags": ["x"]}, "q")
    store.r.delete(store.keys.runs_by_complete())
    store.r.zrem(store.keys.runs_by("tag", tag), ids[0])  # as if recorded before the indexes
    query = RunQuery({"tag": tag})
    scanning = page(store, query)
    assert [r["run_id"] for r in scanning["runs"]] == ids[::-1]
    assert scanning["scanned"] >= 23  # every run looked at
    assert complete_indexes(store) > 0 and complete_indexes(store) == 0  # (then it is a no-op)
    indexed = page(store, query)
    assert [r["run_id"] for r in indexed["runs"]] == ids[::-1]
    assert indexed["scanned"] == 3 and indexed["next"] is None  # only the tag's runs
    by_user = page(store, RunQuery({"user": "erin", "tag": "other"}))
    assert [r["run_id"] for r in by_user["runs"]] == [ids[1]]
    store.r.delete(store.keys.run(ids[2]))  # deleted (retention): skipped
    assert [r["run_id"] for r in page(store, query)["runs"]] == [ids[1], ids[0]]
