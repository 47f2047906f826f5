"""Fair order and quotas on shared queues: which user's run a worker starts next.

A queue stays one broker queue (Flower, events and recovery see runs as before); the order among
users is decided in Redis, when a delivery is admitted on a worker, by one Lua script
(:data:`.fairscripts.GATE`) that also holds the quotas (:mod:`.quotas`):

- At submit a run joins its user's waiting set of the queue (:meth:`FairOrder.enqueue`); a user
  who had nothing waiting joins the round where it is now (no credit saved up while away).
- A delivery that got the run's claim asks the gate. A run whose user (or project) is at a quota
  does not start: it is *parked* (the claim released, the message acknowledged, the run kept in a
  Redis sorted set with the reason on its record: ``user alice at quota (2/2 runs)``). Else, a run
  that never started goes only when no other user with a run waiting at the same or a better
  priority is behind it in the round (stride scheduling: each start moves its user on by
  ``1/weight``); otherwise it is parked too, and the user whose turn it is has a parked run sent
  back to the front of the queue in its place. Re-queued runs (their worker died) are not held
  back for fairness, only for quotas.
- Parked runs go back to the queue (front, the re-queue priority) when their user is the next in
  the round and under quota: one as each run starts or ends (:meth:`FairOrder.wake`), a batch at
  every sweep. A run leaves its parked set only after its message was sent again, so a crash in
  between sends it twice at most, and its claim lets one delivery run it.
- A user whose turn it is but whose runs do not arrive (revoked, still on their way) holds the
  others back at most ``fair_patience`` seconds.

Claims stay the one source of truth: the gate runs after the claim and a parked run's claim is
released in the same script; a cancelled parked run is sent again so that its delivery ends it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from . import fairscripts
from .errors import GpuUnavailable, UnknownRunError
from .gpus import DYNAMIC, STATIC, WorkerGpus
from .quotas import parse_settings, parse_weights
from .settings import Settings
from .state import RunStore

logger = logging.getLogger(__name__)

#: waiting sets are ordered by priority first: score = (RANK_BASE - priority) * RANK_SPAN + time
RANK_BASE, RANK_SPAN = 10, 1e11


@dataclass(frozen=True)
class Verdict:
    """What the gate said of one delivery."""

    admitted: bool
    reason: str = ""  #: why a parked run waits ('user alice at quota (2/2 runs)')
    quota: bool = False  #: parked at a quota (else for another user's turn)
    resend: tuple[str, str] | None = None  #: (user, run id) of a parked run to send again now


class FairOrder:
    """The gate, the waiting sets and the parked runs of a store's queues."""

    def __init__(
        self,
        store: RunStore,
        limits: dict[str, dict[str, int]] | None = None,
        weights: dict[str, float] | None = None,
        patience: float = 30.0,
        gpus: WorkerGpus | None = None,
    ) -> None:
        self.store, self.keys, self.r = store, store.keys, store.r
        self.limits = limits or {}  #: quotas from the settings (Redis ones win)
        self.weights = weights or {}
        self.patience = patience
        self._enqueue = self.r.register_script(fairscripts.ENQUEUE)
        self._gate = self.r.register_script(fairscripts.GATE)
        self._wake = self.r.register_script(fairscripts.WAKE)
        k = self.keys
        self._templates = json.dumps({
            "users": k.fair_users("{q}"), "wait": k.fair_wait("{q}", "{u}"),
            "parked": k.fair_parked("{q}", "{u}"), "pass": k.fair_pass("{q}"),
            "owed": k.fair_owed("{q}"), "queues": k.fair_queues(), "quotas": k.quotas(),
            "active": k.active("{q}", "{u}"), "run": k.run("{q}"), "claim": k.claim("{q}"),
            "abort": k.abort("{q}"),
        } | ({"gpus": _devices(gpus)} if gpus is not None else {}))  # fmt: skip

    def _lib(self) -> list[Any]:
        return [self._templates, json.dumps(self.limits), time.time(), self.patience]

    def enqueue(self, run_id: str, queue: str, user: str, priority: int = 0) -> bool:
        """Put a run (just recorded as queued) in its user's waiting set of ``queue``; True when
        its turn comes before runs of other users already waiting (send it to the front)."""
        joining = self.joining(run_id, queue, user, priority)
        return bool(self._enqueue(keys=joining.keys, args=joining.args))

    def joining(self, run_id: str, queue: str, user: str, priority: int = 0) -> Joining:
        """:meth:`enqueue` as a rider of the run's create write (no round trip of its own)."""
        score = (RANK_BASE - priority) * RANK_SPAN + time.time()
        keys = [self.keys.fair_users(queue), self.keys.fair_wait(queue, user),
                self.keys.fair_pass(queue)]  # fmt: skip
        template = self.keys.fair_wait(queue, "{u}")
        return Joining(keys, [run_id, score, user, json.dumps(self.weights), template])

    def gate(self, run_id: str, queue: str, user: str, project: str, priority: int, gpus: int,
             token: str) -> Verdict:  # fmt: skip
        """Admit a delivery that holds the run's claim (``token``), or park the run (its claim
        released) and say why; GpuUnavailable for a run no quota would ever let start."""
        args = self._gate_args(run_id, queue, user, project, priority, gpus, token, ridden=False)
        return self.verdict(self._gate(keys=[], args=args), gpus)

    def asking(self, run_id: str, queue: str, user: str, project: str, priority: int, gpus: int,
               token: str) -> Asking:  # fmt: skip
        """:meth:`gate` as a rider of the claim's round trip (:meth:`.state.RunStore.claim_view`):
        it answers when the claim was got for a live run; else the delivery asks :meth:`gate`."""
        args = self._gate_args(run_id, queue, user, project, priority, gpus, token, ridden=True)
        return Asking(self, args, gpus)

    def _gate_args(self, run_id: str, queue: str, user: str, project: str, priority: int,
                   gpus: int, token: str, ridden: bool) -> list[Any]:  # fmt: skip
        weight = self.weights.get(user, 1.0)
        return [*self._lib(), run_id, user, project, queue, RANK_BASE - priority, weight, gpus,
                token, "1" if ridden else "0"]  # fmt: skip

    def verdict(self, answer: list[Any], gpus: int) -> Verdict:
        """The gate's ``answer`` for a run holding ``gpus`` as a :class:`Verdict` (raises
        GpuUnavailable for a run no quota would ever let start)."""
        verdict, reason, other, run = answer
        if verdict == "never":
            name = str(reason).split(":", 1)[1].split("@")[0]
            flag = " --project" if str(reason).startswith("project:") else ""
            raise GpuUnavailable(
                f"the run holds {gpus} GPUs, more than quota {reason} allows at once ({other})",
                f"ask for fewer GPUs, or raise it: celery-agent quota set {name}{flag} --gpus {gpus}",
            )
        resend = (str(other), str(run)) if run else None
        if verdict == "admit":
            return Verdict(True, resend=resend)
        return Verdict(False, str(reason), verdict == "quota", resend)

    def wake(self, batch: int = 1, scan: bool = False) -> list[tuple[str, str, str]]:
        """Parked runs to send again now: (queue, user, run id) of up to ``batch`` per queue of
        the user whose turn it is, and with ``scan`` of every parked run no longer queued."""
        flat = self._wake(keys=[], args=[*self._lib(), batch, "1" if scan else "0"])
        return self.woken(flat)  # (a cancelled run of the next user comes up once)

    def wake_on(self, pipe: Any, batch: int = 1) -> None:
        """Queue :meth:`wake` on ``pipe`` (a run's end write: no round trip of its own); its
        result goes to :meth:`woken`."""
        pipe.eval(fairscripts.WAKE, 0, *self._lib(), batch, "0")  # (EVAL: never NOSCRIPT)

    @staticmethod
    def woken(flat: list[str]) -> list[tuple[str, str, str]]:
        """The parked runs a wake queued with :meth:`wake_on` found: (queue, user, run id)."""
        found = [(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]
        return list(dict.fromkeys(found))

    def unpark(self, queue: str, user: str, run_id: str) -> None:
        """Take a run that was sent again off its parked set."""
        self.r.zrem(self.keys.fair_parked(queue, user), run_id)

    def parked(self, queue: str, user: str) -> list[str]:
        """The runs of ``user`` parked on ``queue``, first to go first."""
        return list(self.r.zrange(self.keys.fair_parked(queue, user), 0, -1))


class Joining:
    """A run joining its user's waiting set (:meth:`FairOrder.joining`), riding on the write that
    records it (:meth:`.state.RunStore.create_run`)."""

    def __init__(self, keys: list[str], args: list[Any]) -> None:
        self.keys, self.args = keys, args
        self.ahead = False  #: its turn comes before others' waiting runs (send it to the front)

    def queue(self, pipe: Any) -> None:
        """Add the script to the write's pipeline (EVAL: never NOSCRIPT)."""
        pipe.eval(fairscripts.ENQUEUE, len(self.keys), *self.keys, *self.args)

    def reply(self, result: Any) -> None:
        """Take the script's reply (raises what it failed with, as :meth:`FairOrder.enqueue`)."""
        if isinstance(result, Exception):
            raise result
        self.ahead = bool(result)


class Asking:
    """A delivery's question to the gate (:meth:`FairOrder.asking`), riding on the claim's round
    trip; :meth:`verdict` is None when the gate did not answer there."""

    def __init__(self, fair: FairOrder, args: list[Any], gpus: int) -> None:
        self.fair, self.args, self.gpus = fair, args, gpus
        self.answer: Any = None

    def queue(self, pipe: Any) -> None:
        """Add the gate to the claim's pipeline (EVALSHA: a NOSCRIPT reply is asked again alone,
        which loads the script)."""
        pipe.evalsha(self.fair._gate.sha, 0, *self.args)

    def reply(self, result: Any) -> None:
        """Keep the gate's reply (an exception object when it failed)."""
        self.answer = result

    def verdict(self) -> Verdict | None:
        """The gate's verdict, or None: ask :meth:`FairOrder.gate` alone (the script was not
        loaded yet, it failed, or the delivery is not one it decides on the claim's trip)."""
        answer = self.answer
        if answer is None or isinstance(answer, Exception) or answer[0] == "skip":
            return None
        return self.fair.verdict(answer, self.gpus)


def fair_order(store: RunStore, settings: Settings, gpus: WorkerGpus | None = None) -> FairOrder:
    """The gate on ``store`` with the quotas, weights and patience of ``settings``, deciding on
    a worker with ``gpus`` (None: not on a worker, as the sweep)."""
    limits = parse_settings(settings.quotas)
    weights = parse_weights(settings.user_weights)
    return FairOrder(store, limits, weights, settings.fair_patience, gpus)


def _devices(gpus: WorkerGpus) -> dict[str, Any]:
    """What the gate knows of a worker's GPUs to tell what another user's run would hold on it
    (see ``holds`` in :data:`.fairscripts.LIB`): how many it owns and whether a run gets all."""
    bound = gpus.mode in (STATIC, DYNAMIC)
    return {"n": len(gpus.devices) if bound else 0, "static": gpus.mode == STATIC}


def send_again(fair: FairOrder, resend: Any, items: list[tuple[str, str, str]]) -> list[str]:
    """Send parked runs (queue, user, run id) to their queue again through ``resend``
    (``resend(run_id, spec_json, queue)``), each taken off its parked set once sent."""
    sent = []
    for queue, user, run_id in items:
        try:
            record = fair.store.get(run_id)
        except UnknownRunError:  # deleted meanwhile: nothing to send
            fair.unpark(queue, user, run_id)
            continue
        resend(run_id, record.get("spec") or {}, str(record.get("queue") or queue))
        fair.unpark(queue, user, run_id)
        sent.append(run_id)
    return sent
