"""A search's record in Redis, next to the runs it started (its keys: see :mod:`..keys`)."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from ..errors import UnknownRunError
from .results import SearchResult, TrialResult

if TYPE_CHECKING:
    from ..state import RunStore


class SearchRecord:
    """Reads and writes one store's search records."""

    def __init__(self, store: RunStore) -> None:
        self.r, self.keys = store.r, store.keys

    def create(self, result: SearchResult, base_spec: dict[str, Any]) -> None:
        """Record a new search as running."""
        now = time.time()
        fields = {"objective": result.objective, "direction": result.direction,
                  "sampler": result.sampler, "space": json.dumps(result.space),
                  "spec": json.dumps(base_spec), "out_dir": result.out_dir,
                  "state": result.state, "started_at": repr(now)}  # fmt: skip
        pipe = self.r.pipeline()
        pipe.hset(self.keys.search(result.search_id), mapping=fields)
        pipe.zadd(self.keys.searches(), {result.search_id: now})
        pipe.execute()

    def put_trial(self, search_id: str, trial: TrialResult) -> None:
        """Record a trial as it is now."""
        self.r.hset(
            self.keys.search_trials(search_id), str(trial.number), json.dumps(trial.to_json())
        )

    def finish(self, result: SearchResult) -> None:
        """Record the search's final state and its best trial."""
        best = result.best
        fields = {"state": result.state, "finished_at": repr(time.time())}
        if best is not None:
            fields |= {"best_trial": str(best.number), "best_value": repr(best.value),
                       "best_run": best.run_id, "best_params": json.dumps(best.params)}  # fmt: skip
        self.r.hset(self.keys.search(result.search_id), mapping=fields)

    def load(self, search_id: str) -> SearchResult:
        """A recorded search with its trials; raises UnknownRunError when there is none."""
        raw = self.r.hgetall(self.keys.search(search_id))
        if not raw:
            raise UnknownRunError(f"no search {search_id!r} is recorded")
        trials = self.r.hvals(self.keys.search_trials(search_id))
        return SearchResult(
            search_id, raw.get("objective", ""), raw.get("direction", "max"),
            raw.get("sampler", ""), json.loads(raw.get("space") or "{}"),
            [TrialResult.from_json(json.loads(t)) for t in trials],
            raw.get("state", ""), raw.get("out_dir", ""),
        )  # fmt: skip

    def recent(self, limit: int = 20) -> list[str]:
        """Ids of the latest searches, newest first."""
        return list(self.r.zrevrange(self.keys.searches(), 0, limit - 1))

    def request_cancel(self, search_id: str, ttl: int = 7 * 86400) -> None:
        """Ask the search's controller to stop and cancel its trials."""
        if not self.r.exists(self.keys.search(search_id)):
            raise UnknownRunError(f"no search {search_id!r} is recorded")
        self.r.set(self.keys.search_cancel(search_id), "1", ex=ttl)

    def cancel_requested(self, search_id: str) -> bool:
        """Whether someone asked the search to stop."""
        return bool(self.r.exists(self.keys.search_cancel(search_id)))
