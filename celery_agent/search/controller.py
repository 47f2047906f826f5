"""The search loop: ask the sampler, submit trials as normal runs, collect their objective.

Each trial is a run of the base spec with the trial's ``params`` merged over the spec's own. At most
``parallel`` trials run at once. A trial whose run fails, or that never reports the objective, is
recorded as failed and the search goes on. The objective of a trial is the last value of the metric
its run reported. Ctrl+C, a set ``cancel`` event or :func:`cancel_search` stop the search and
cancel the trials it has running.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import metrics
from ..spec import TaskSpec
from ..state import SUCCEEDED, TERMINAL
from .record import SearchRecord
from .results import CANCELLED, DONE, FAILED, SearchResult, TrialResult
from .samplers import Direction, Sampler, make_sampler
from .space import SpaceLike, describe, parse_space

if TYPE_CHECKING:
    from ..handle import RunHandle
    from ..state import RunStore

logger = logging.getLogger(__name__)

TrialCallback = Callable[[TrialResult], None]


class Search:
    """One search in progress (see :func:`run_search`)."""

    def __init__(self, base: TaskSpec, sampler: Sampler, result: SearchResult, store: RunStore,
                 trials: int, parallel: int, poll: float = 0.5) -> None:  # fmt: skip
        self.base, self.sampler, self.result, self.store = base, sampler, result, store
        self.trials, self.parallel, self.poll = trials, max(1, parallel), poll
        self.record = SearchRecord(store)
        self.active: dict[int, tuple[TrialResult, RunHandle]] = {}
        self.exhausted = False
        self.on_trial: TrialCallback | None = None
        self.cancel_event = threading.Event()

    def run(self) -> SearchResult:
        """Run trials until enough have finished, the sampler runs out, or the search is cancelled."""
        try:
            while self.fill() or self.active:
                if self.cancelled():
                    self.result.state = CANCELLED
                    break
                self.collect()
                time.sleep(self.poll) if self.active else None
            else:
                self.result.state = "finished"
        except BaseException:
            self.result.state = CANCELLED
            raise
        finally:
            self.cancel_active()
            self.record.finish(self.result)
        return self.result

    def cancelled(self) -> bool:
        """Whether a cancel was asked for, here or through Redis."""
        return self.cancel_event.is_set() or self.record.cancel_requested(self.result.search_id)

    def fill(self) -> bool:
        """Start trials up to ``parallel``; returns whether more can still start later."""
        while not self.exhausted and len(self.active) < self.parallel and self._room():
            proposal = self.sampler.ask()
            if proposal is None:
                self.exhausted = True
            else:
                self.start(*proposal)
        return not self.exhausted and self._room()

    def _room(self) -> bool:
        return len(self.result.trials) < self.trials

    def start(self, number: int, params: dict[str, Any]) -> None:
        """Submit one trial's run."""
        from ..handle import submit

        name = f"search-{self.result.search_id}-t{number}"
        spec = self.base.with_changes(params={**self.base.params, **params}, name=name)
        handle = submit(spec)
        trial = TrialResult(number, params, run_id=handle.id)
        self.result.trials.append(trial)
        self.active[number] = (trial, handle)
        self.record.put_trial(self.result.search_id, trial)
        logger.info("trial %d: run %s with %s", number, handle.id, params)

    def collect(self) -> None:
        """Score the trials whose runs ended."""
        for number, (trial, handle) in list(self.active.items()):
            run_state = str(handle.info().get("state", ""))
            if run_state in TERMINAL:
                del self.active[number]
                self.score(trial, run_state)

    def score(self, trial: TrialResult, run_state: str) -> None:
        """Set a finished trial's value and state; tell the sampler."""
        trial.run_state = run_state
        trial.value = metrics.last_value(self.store, trial.run_id, self.result.objective)
        if run_state != SUCCEEDED:
            trial.state, trial.error, trial.value = FAILED, f"run {run_state}", None
        elif trial.value is None:
            trial.state, trial.error = FAILED, f"no finite {self.result.objective} reported"
        else:
            trial.state = DONE
        self.sampler.tell(trial.number, trial.value)
        self.record.put_trial(self.result.search_id, trial)
        self.on_trial(trial) if self.on_trial else None

    def cancel_active(self) -> None:
        """Cancel the trials still running and record them as cancelled."""
        for trial, handle in self.active.values():
            try:
                handle.cancel()
            except Exception as exc:
                logger.warning("could not cancel trial %d (run %s): %s", trial.number, trial.run_id, exc)  # fmt: skip
            trial.state = CANCELLED
            self.sampler.tell(trial.number, None)
            self.record.put_trial(self.result.search_id, trial)
        self.active.clear()


def run_search(base_spec: TaskSpec | dict[str, Any], space: SpaceLike,
               objective: str, direction: Direction = "max", trials: int = 20, parallel: int = 4,
               sampler: str = "random", *, seed: int | None = None, storage: str | None = None,
               out_dir: Path | None = None, store: RunStore | None = None,
               on_trial: TrialCallback | None = None, cancel: threading.Event | None = None,
               poll: float = 0.5, search_id: str | None = None) -> SearchResult:  # fmt: skip
    """Search ``space`` for the best ``objective`` (the last value of that metric) of runs of
    ``base_spec``; writes ``results.json`` and ``plot.png`` into ``out_dir`` (default: the agent
    home's ``searches/<id>``) and returns the :class:`SearchResult`. ``store`` defaults to this
    process's run store."""
    from ..app import get_settings, get_store

    search = prepare(base_spec, space, objective, direction, trials, parallel, sampler,
                     seed=seed, storage=storage, out_dir=out_dir, store=store or get_store(),
                     home=get_settings().home, poll=poll, search_id=search_id)  # fmt: skip
    search.on_trial = on_trial
    if cancel is not None:
        search.cancel_event = cancel
    try:
        return search.run()
    finally:
        save_outputs(search.result)


def prepare(base_spec: TaskSpec | dict[str, Any], space: SpaceLike,
            objective: str, direction: Direction, trials: int, parallel: int, sampler: str, *,
            seed: int | None, storage: str | None, out_dir: Path | None,
            store: RunStore, home: Path, poll: float, search_id: str | None) -> Search:  # fmt: skip
    """A recorded search in ``store``, ready to :meth:`Search.run`; its outputs go to
    ``out_dir``, by default ``searches/<id>`` in the agent's ``home``."""
    base, dims = TaskSpec.parse(base_spec), parse_space(space)
    sid = search_id or uuid.uuid4().hex[:12]
    folder = out_dir or home / "searches" / sid
    result = SearchResult(sid, objective, direction, sampler, describe(dims), out_dir=str(folder))
    chosen = make_sampler(sampler, dims, direction, trials, seed=seed, storage=storage, study_name=sid)  # fmt: skip
    search = Search(base, chosen, result, store, trials, parallel, poll)
    search.record.create(result, base.to_json())
    return search


def save_outputs(result: SearchResult) -> None:
    """Write results.json and, when matplotlib is installed, plot.png into the result's folder."""
    from .plot import save_png

    folder = Path(result.out_dir)
    result.save(folder)
    try:
        save_png(result, folder / "plot.png")
    except Exception as exc:  # a plot must never lose the results
        logger.warning("no plot for search %s: %s", result.search_id, exc)


def cancel_search(search_id: str, store: RunStore | None = None) -> None:
    """Ask a running search (in any process) to stop and cancel its trials."""
    from ..app import get_store

    SearchRecord(store or get_store()).request_cancel(search_id)


def load_search(search_id: str, store: RunStore | None = None) -> SearchResult:
    """A recorded search as it is now."""
    from ..app import get_store

    return SearchRecord(store or get_store()).load(search_id)
