"""The fair-order gate against a real Redis, delivery by delivery: turns across users (weighted),
quotas per user and queue, a swap of parked runs, patience with a user whose runs never come, and
cancelled parked runs sent to their end."""

from __future__ import annotations

import uuid

import pytest

from celery_agent.fairorder import FairOrder
from celery_agent.quotas import Quotas, scope
from celery_agent.state import RunStore

pytestmark = pytest.mark.integration


class Queue:
    """Runs submitted to one queue and delivered by hand, as a worker's gate sees them."""

    def __init__(self, store: RunStore, fair: FairOrder) -> None:
        self.store, self.fair, self.name = store, fair, f"q-{uuid.uuid4().hex[:6]}"

    def submit(self, user: str, n: int = 1) -> list[str]:
        ids = []
        for _ in range(n):
            run_id = uuid.uuid4().hex
            self.store.create_run(run_id, {"repo": "/r", "entry": "t.py"}, self.name, user=user)
            self.fair.enqueue(run_id, self.name, user)
            ids.append(run_id)
        return ids

    def deliver(self, run_id: str, user: str):
        token = f"tok-{run_id}"
        assert self.store.claim(run_id, token, 30) is None
        verdict = self.fair.gate(run_id, self.name, user, "", 0, 1, token)
        if verdict.admitted:
            self.store.transition(run_id, "preparing")
        else:
            assert self.store.r.get(self.store.keys.claim(run_id)) is None, "parked: claim freed"
        return verdict

    def woken(self, scan: bool = False) -> list[tuple[str, str, str]]:
        """What a wake would send again of this queue's parked runs."""
        return [item for item in self.fair.wake(scan=scan) if item[0] == self.name]

    def end(self, run_id: str) -> None:
        self.store.transition(run_id, "succeeded")
        self.store.release_claim(run_id, f"tok-{run_id}")


@pytest.fixture()
def users(store):
    def make(**kw) -> Queue:
        return Queue(store, FairOrder(store, **kw))

    return make


def test_users_take_turns_and_a_weight_gives_more_turns(users):
    q = users(weights={"w": 2.0})
    a, b, w = q.submit("a", 4), q.submit("b", 4), q.submit("w", 4)
    started = []
    pending = {rid: u for u, ids in (("a", a), ("b", b), ("w", w)) for rid in ids}
    for _ in range(40):  # the broker's order: everything as submitted, parked ones sent again
        for rid, user in list(pending.items()):
            verdict = q.deliver(rid, user)
            if verdict.admitted:
                started.append(user)
                del pending[rid]
                q.end(rid)
        if not pending:
            break
    assert sorted(started) == sorted(["a"] * 4 + ["b"] * 4 + ["w"] * 4)
    first6 = started[:6]
    assert first6.count("w") >= 2 and first6.count("a") >= 1 and first6.count("b") >= 1


def test_a_parked_run_is_swapped_in_and_the_round_goes_on(users):
    q = users()
    a = q.submit("a", 3)
    assert q.deliver(a[0], "a").admitted
    (b,) = q.submit("b", 1)
    parked = q.deliver(a[1], "a")
    assert not parked.admitted and parked.reason == "user b goes first" and not parked.quota
    assert q.store.get(a[1])["waiting"] == "fair order: user b goes first"
    admitted = q.deliver(b, "b")
    assert admitted.admitted and admitted.resend == ("a", a[1]), "a's parked run goes next"
    assert "waiting" not in q.store.get(b)


def test_quotas_per_user_and_per_queue_park_with_the_count(users, store):
    q = users(limits={"user:c": {"runs": 2}})
    c = q.submit("c", 3)
    assert q.deliver(c[0], "c").admitted and q.deliver(c[1], "c").admitted
    over = q.deliver(c[2], "c")
    assert not over.admitted and over.quota and over.reason == "user c at quota (2/2 runs)"
    q.end(c[0])  # its claim goes: the slot is free again
    assert q.woken() == [(q.name, "c", c[2])]
    pipe = store.r.pipeline(transaction=False)  # the same wake, riding on a run's end write
    q.fair.wake_on(pipe)
    assert (q.name, "c", c[2]) in FairOrder.woken(pipe.execute()[-1])
    q.fair.unpark(q.name, "c", c[2])
    assert q.deliver(c[2], "c").admitted
    Quotas(store).set(scope("user", "d", q.name), gpus=1)
    d = q.submit("d", 2)
    assert q.deliver(d[0], "d").admitted
    assert q.deliver(d[1], "d").reason == f"user d at quota (1/1 GPUs on {q.name})"
    Quotas(store).remove(scope("user", "d", q.name))


def test_a_user_whose_runs_never_come_holds_others_back_only_for_a_while(users):
    q = users(patience=0.0)
    a = q.submit("a", 3)
    assert q.deliver(a[0], "a").admitted
    q.submit("ghost", 2)  # (revoked: never delivered)
    assert not q.deliver(a[1], "a").admitted  # the ghost's turn: a waits, the clock starts
    assert q.deliver(a[2], "a").admitted, "past fair_patience the ghost holds nobody back"


def test_a_cancelled_parked_run_is_sent_to_its_end_by_the_sweeps_wake(users, store):
    q = users(limits={"user:e": {"runs": 1}})
    first, parked = q.submit("e", 2)
    assert q.deliver(first, "e").admitted and not q.deliver(parked, "e").admitted
    assert store.request_abort(parked) == "queued"
    assert q.woken() == [], "not its turn: at quota still"
    assert q.woken(scan=True) == [(q.name, "e", parked)]


def test_a_run_wanting_more_gpus_than_its_quota_ever_allows_is_refused(users, store):
    from celery_agent.errors import GpuUnavailable

    q = users(limits={"project:cv": {"gpus": 2}})
    (run_id,) = q.submit("f")
    store.claim(run_id, "tok", 30)
    with pytest.raises(GpuUnavailable) as err:
        q.fair.gate(run_id, q.name, "f", "cv", 0, 4, "tok")
    assert "more than quota project:cv allows at once (2)" in str(err.value)
    assert "celery-agent quota set cv --project --gpus 4" in str(err.value.hint)


def test_the_gate_riding_on_the_claim_decides_as_it_does_alone(users, store):
    q = users(limits={"user:g": {"runs": 1}})
    a, _ = q.submit("a", 2)
    joining = q.fair.joining(b := uuid.uuid4().hex, q.name, "g")
    assert store.create_run(b, {"repo": "/r", "entry": "t.py"}, q.name, joining, user="g")
    assert joining.ahead, "g's turn comes before a's second run: the same answer as enqueue"
    (c,) = q.submit("g")
    for run_id, user, admitted in ((a, "a", True), (b, "g", True), (c, "g", False)):
        asking = q.fair.asking(run_id, "elsewhere", user, "", 0, 0, f"tok-{run_id}")
        assert store.claim_view(run_id, f"tok-{run_id}", 30, "w", asking)[0]
        verdict = asking.verdict()
        assert verdict is not None and verdict.admitted is admitted, (user, verdict)
        if admitted:
            store.transition(run_id, "preparing")
    assert verdict.reason == "user g at quota (1/1 runs)" and verdict.quota
    assert store.r.get(store.keys.claim(c)) is None, "parked on the ride: its claim freed"
    assert c in q.fair.parked(q.name, "g"), "parked on the queue its record names"


def test_the_riding_gate_leaves_what_it_does_not_decide_to_the_gate_alone(users, store):
    q = users()
    held, cancelled, unknown = q.submit("h", 2) + [uuid.uuid4().hex]
    assert store.claim(held, "other-holder", 30) is None
    store.request_abort(cancelled)
    for run_id in (held, cancelled, unknown):
        asking = q.fair.asking(run_id, q.name, "h", "", 0, 0, f"tok-{run_id}")
        store.claim_view(run_id, f"tok-{run_id}", 30, "w", asking)
        assert asking.verdict() is None, run_id
        assert store.r.hget(store.keys.active("user", "h"), run_id) is None, "nothing written"
    store.r.script_flush()  # (Redis restarted: the script is not loaded; the gate alone loads it)
    (fresh,) = q.submit("h")
    asking = q.fair.asking(fresh, q.name, "h", "", 0, 0, f"tok-{fresh}")
    assert store.claim_view(fresh, f"tok-{fresh}", 30, "w", asking)[0]
    assert (
        asking.verdict() is None
        and q.fair.gate(fresh, q.name, "h", "", 0, 0, f"tok-{fresh}").admitted
    )


def test_the_turn_passes_over_a_user_whose_next_run_is_over_a_gpu_quota(users, store):
    from celery_agent.gpus import STATIC, WorkerGpus, fake_uuid
    from celery_agent.monitoring.gpu import GpuDevice

    two = WorkerGpus(STATIC, [GpuDevice(i, fake_uuid(i)) for i in range(2)])
    q = users(limits={"user:k": {"gpus": 2}}, gpus=two)  # (a static worker: a run holds both)
    k, m = q.submit("k", 2), q.submit("m", 3)
    assert q.deliver(k[0], "k").admitted  # (deliver asks for 1 GPU: k holds 1 of 2)
    assert q.deliver(m[0], "m").admitted and q.deliver(m[1], "m").admitted
    assert q.deliver(m[2], "m").admitted, "k is behind in the round but its next run needs 2 more"
    q.end(k[0])  # (k holds none now: its next run, 2 GPUs on this worker, can start)
    (later,) = q.submit("m")
    assert q.deliver(later, "m").reason == "user k goes first"


def test_setting_one_limit_of_a_quota_keeps_the_other(store, capsys):
    from celery_agent.cli import main

    who = f"lena-{uuid.uuid4().hex[:6]}"
    assert main(["quota", "set", who, "--runs", "2", "--gpus", "4"]) == 0
    assert main(["quota", "set", who, "--gpus", "8"]) == 0
    assert f"quota user:{who}: 2 runs, 8 gpus" in capsys.readouterr().out
    assert Quotas(store).table()[f"user:{who}"] == ({"runs": 2, "gpus": 8}, "redis")
    assert main(["quota", "rm", who]) == 0
    assert f"user:{who}" not in Quotas(store).table()
