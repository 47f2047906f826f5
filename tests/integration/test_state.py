from __future__ import annotations

import time
import uuid

import pytest
import redis
from redis_support import lose_next_reply

from celery_agent.errors import StateError, UnknownRunError
from celery_agent.keeper import Held, Keeper
from celery_agent.state import START_FIELDS, RunStore
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration


def new_id() -> str:
    return uuid.uuid4().hex


def test_run_record_moves_through_states_with_timestamps(store: RunStore):
    rid = new_id()
    assert store.create_run(rid, {"repo": "/r", "entry": "t.py", "name": "exp"}, "q")
    assert not store.create_run(rid, {"repo": "/r", "entry": "t.py"}, "q"), "ids are recorded once"
    assert store.transition(rid, "preparing", worker="w1") == "queued"
    store.transition(rid, "running")
    store.transition(rid, "succeeded", exit_code=0, params={"lr": 0.5})
    rec = store.get(rid)
    assert rec["state"] == "succeeded" and rec["exit_code"] == 0 and rec["params"] == {"lr": 0.5}
    assert rec["submitted_at"] <= rec["preparing_at"] <= rec["running_at"] <= rec["succeeded_at"]
    assert rec["name"] == "exp" and rec["spec"]["entry"] == "t.py"


def test_a_run_is_recorded_once_with_its_index_entry(store: RunStore):
    rid = new_id()
    assert store.create_run(rid, {"repo": "/r", "entry": "t.py"}, "q", attempt=2, note=None)
    raw = store.r.hgetall(store.keys.run(rid))
    assert raw["state"] == "queued" and raw["queue"] == "q" and raw["name"] == "t.py"
    assert raw["spec"] == '{"repo": "/r", "entry": "t.py"}'
    assert raw["attempt"] == "2" and raw["note"] == "", "fields override, None is stored empty"
    assert store.r.zscore(store.keys.runs(), rid) == float(raw["submitted_at"])
    store.transition(rid, "running")
    before = store.r.hgetall(store.keys.run(rid))
    assert not store.create_run(rid, {"repo": "/other", "entry": "u.py"}, "q2", attempt=5)
    assert store.r.hgetall(store.keys.run(rid)) == before, "a second create changes nothing"
    assert store.r.zscore(store.keys.runs(), rid) == float(raw["submitted_at"])


def test_claim_view_claims_once_and_reads_flags_and_record(store: RunStore):
    rid = new_id()
    assert store.claim_view(rid, "w1|h|1", 5, "w1") == (True, "w1|h|1", False, False, {})
    store.create_run(rid, {"repo": "/r", "entry": "t.py"}, "q")
    store.request_abort(rid)
    draining_worker = f"w-{rid}"
    store.r.set(store.keys.worker_drain(draining_worker), "1", ex=60)
    got, holder, cancelled, draining, record = store.claim_view(rid, "w2|h|2", 5, draining_worker)
    assert (got, holder, cancelled, draining) == (False, "w1|h|1", True, True)
    full = store.get(rid)  # only the fields a delivery needs to start are read
    assert record == {"run_id": rid} | {k: full[k] for k in START_FIELDS if k in full}
    assert record["state"] == "aborted" and record["attempt"] == 0 and "spec" not in record
    assert 0 < store.r.pttl(store.keys.claim(rid)) <= 5000


def test_transition_fields_keep_every_character_in_a_pipeline_and_alone(store: RunStore):
    rid = new_id()
    store.create_run(rid, {"repo": "/r", "entry": "t.py"}, "q")
    text = 'caf\u00e9 \U0001f600 "q" \\ \n\t \u4e2d {"a": [1]}'
    pipe = store.r.pipeline(transaction=False)
    store.transition(rid, "running", pipe=pipe, error=text, log_tail=[text, ""], exit_code=3)
    assert pipe.execute() == ["queued"]
    store.transition(rid, "failed", error_stage=text, flag=True, nothing=None)
    raw = store.r.hgetall(store.keys.run(rid))
    assert raw["error"] == text and raw["error_stage"] == text
    assert raw["flag"] == "1" and raw["nothing"] == "" and raw["exit_code"] == "3"
    rec = store.get(rid)
    assert rec["state"] == "failed" and rec["log_tail"] == [text, ""]


def test_terminal_state_is_not_overwritten_by_a_late_transition(store: RunStore):
    rid = new_id()
    store.create_run(rid, {"repo": "/r", "entry": "t.py"}, "q")
    assert store.request_abort(rid) == "queued"
    assert store.transition(rid, "preparing") == "aborted"
    assert store.get(rid)["state"] == "aborted"
    store.transition(rid, "failed", force=True)
    assert store.get(rid)["state"] == "failed"


def test_log_chunks_come_back_in_order_and_follow_stops_at_the_end(store: RunStore):
    rid = new_id()
    store.create_run(rid, {"repo": "/r", "entry": "t.py"}, "q")
    store.append_log(rid, [f"a{i}" for i in range(1500)])
    store.append_log(rid, ["b"])
    last, lines = store.read_log(rid)
    assert lines == [f"a{i}" for i in range(1500)] + ["b"]
    assert store.read_log(rid, last) == (last, [])

    follow = store.follow_log(rid, poll=0.1)
    assert [next(follow) for _ in range(1501)][-1] == "b"  # following: all there is, so far
    store.append_log(rid, ["c"])
    store.transition(rid, "succeeded")
    assert list(follow) == ["c"]  # the line that came later, then the end


def test_claim_is_exclusive_renewable_and_released(store: RunStore):
    rid = new_id()
    assert store.claim(rid, "w1", ttl=5) is None
    assert store.claim(rid, "w2", ttl=5) == "w1"
    assert store.renew_claim(rid, "w1", 5) and not store.renew_claim(rid, "w2", 5)
    store.release_claim(rid, "w2")
    assert store.claim(rid, "w3", 5) == "w1", "only the holder can release"
    store.release_claim(rid, "w1")
    assert store.claim(rid, "w3", 5) is None


def test_the_keeper_keeps_a_short_claim_alive_and_hears_a_cancel(store: RunStore):
    rid, keeper = new_id(), Keeper(store)
    store.claim(rid, "w1", ttl=0.6)
    held = keeper.hold(rid, "w1", ttl=0.6)
    end = time.monotonic() + 1.5
    while time.monotonic() < end:  # more than twice its TTL, held at every look
        assert store.claim(rid, "w2", 0.6) == "w1"
        time.sleep(0.05)
    assert not held.cancel_heard
    store.create_run(rid, {"repo": "/r", "entry": "t.py"}, "q")
    store.transition(rid, "running")
    store.request_abort(rid)
    wait_for("the keeper to hear the cancel", lambda: held.cancel_heard, 2, every=0.01)
    keeper.drop(held)
    # no longer renewed: it expires
    wait_for("the dropped claim to expire", lambda: store.claim(rid, "w2", 0.6) is None, 5)


def test_deferred_writes_go_out_with_the_next_write_or_soon(store: RunStore):
    rid, keeper = new_id(), Keeper(store)
    store.create_run(rid, {"repo": "/r", "entry": "t.py"}, "q")
    held = keeper.hold(rid, "w1", ttl=5)
    held.defer(["one"], commit="abc")
    old = held.write(lambda pipe: store.transition(rid, "running", pipe=pipe))
    assert old == ["queued"]
    assert store.read_log(rid)[1] == ["one"] and store.get(rid)["commit"] == "abc"
    held.defer_state("preparing", attempt=2)
    held.defer_state("running", pid=7)  # both go out as one change, with the fields of both
    held.write()
    record = store.get(rid)
    assert record["state"] == "running" and record["attempt"] == 2 and str(record["pid"]) == "7"
    assert record["preparing_at"] <= record["running_at"]
    store.transition(rid, "aborted")
    held.defer_state("running")
    held.write()
    assert store.get(rid)["state"] == "aborted", "a deferred change never undoes an end"
    held.defer(["two"])  # nothing else written: the keeper sends it within FLUSH_AFTER
    wait_for(
        "the deferred line sent", lambda: store.read_log(rid)[1] == ["one", "two"], 2, every=0.01
    )
    keeper.drop(held)


def test_the_last_write_folds_the_deferred_fields_and_state_into_the_end(store: RunStore):
    rid, keeper = new_id(), Keeper(store)
    store.create_run(rid, {"repo": "/r", "entry": "t.py"}, "q")
    held = keeper.hold(rid, "w1", ttl=5)
    held.defer(["[agent] note"], commit="abc", exit_code=9)
    held.defer_state("running", pid=7)
    held.defer(["user line"])
    end = {"exit_code": 0}
    commands: list[str] = []

    def write(pipe) -> None:
        commands.extend(c[0][0] for c in pipe.command_stack)  # what the deferred part queued
        store.transition(rid, "succeeded", force=True, pipe=pipe, **end)

    held.write(write, end=end)
    assert commands == ["EVAL"], "fields and state went into the end, not writes of their own"
    record = store.get(rid)
    assert (
        record["state"] == "succeeded" and record["commit"] == "abc" and str(record["pid"]) == "7"
    )
    assert record["exit_code"] == 0, "the end's own values win"
    assert record["running_at"] <= record["succeeded_at"]
    assert store.read_log(rid)[1] == ["[agent] note", "user line"]
    keeper.drop(held)


def test_a_batch_sent_again_after_its_reply_was_lost_is_in_the_log_once(store, monkeypatch):
    rid = new_id()  # (no keeper thread: it would send the deferred note itself)
    store.create_run(rid, {"repo": "/r", "entry": "t.py"}, "q")
    held = Held(store, rid, "w1", ttl=5)
    lost = lose_next_reply(store.r, monkeypatch)
    with pytest.raises(StateError):
        held.send(["line 0", "line 1"])
    assert store.read_log(rid)[1] == ["line 0", "line 1"], "Redis applied the lost write"
    held.send(["line 0", "line 1", "line 2"])  # the pump sends the kept lines and the next
    held.send(["line 3"])
    lost[0] = False
    held.defer(["[agent] note"])
    with pytest.raises(StateError):
        held.write()
    held.write()  # the deferred note, kept, goes again
    held.send(["line 4"])
    assert store.read_log(rid)[1] == [
        "line 0", "line 1", "line 2", "line 3", "[agent] note", "line 4"
    ]  # fmt: skip
    again = Held(store, rid, "w1", ttl=5)  # a later attempt in the same process counts anew
    again.send(["line 0"])
    assert store.read_log(rid)[1][-1] == "line 0"


def test_find_accepts_a_unique_prefix(store: RunStore):
    rid = "ffee" + new_id()
    store.create_run(rid, {"repo": "/r", "entry": "t.py"}, "q")
    assert store.find(rid[:10]) == rid
    with pytest.raises(UnknownRunError):
        store.find("no-such-run")
    with pytest.raises(UnknownRunError, match="celery-agent ls"):
        store.get("no-such-run")


def test_unreachable_redis_is_a_clear_state_error():
    from celery_agent.embedded import free_port

    dead = RunStore(redis.Redis(port=free_port(), socket_connect_timeout=0.5), "ca")
    with pytest.raises(StateError, match=r"Redis is unreachable at redis://localhost:\d+/0"):
        dead.create_run("x", {"repo": "/r", "entry": "t.py"}, "q")


def test_run_counters_count_each_submit_end_and_requeue_once(store: RunStore):
    own = RunStore(store.r, prefix=f"t{new_id()[:8]}")  # counters of its own
    ids = [new_id() for _ in range(4)]
    for rid in ids:
        assert own.create_run(rid, {"repo": "/r", "entry": "t.py"}, "q")
    assert not own.create_run(ids[0], {"repo": "/r", "entry": "t.py"}, "q")  # not counted again
    own.transition(ids[0], "preparing")
    own.transition(ids[0], "running")
    own.transition(ids[0], "succeeded")
    own.transition(ids[0], "failed")  # refused: it ended already
    own.transition(ids[0], "aborted", force=True)  # forced over an end: still one end
    pipe = own.r.pipeline(transaction=False)
    own.transition(ids[1], "running", pipe=pipe)
    own.transition(ids[1], "queued", pipe=pipe)  # a drained run goes back
    own.transition(ids[1], "failed", pipe=pipe)
    pipe.execute()
    own.transition(ids[2], "running")
    assert own.requeue_lost(ids[2], 2, "worker lost") == "requeued"
    own.transition(ids[2], "running")
    assert own.requeue_lost(ids[2], 2, "worker lost") == "lost"
    counts = own.r.hgetall(own.keys.run_counts())
    assert counts == {
        "submitted": "4",
        "succeeded": "1",
        "failed": "1",
        "requeued": "2",
        "lost": "1",
        "lost_attempts": "2",
    }
