"""A run's transitions through :class:`celery_agent.pipeline.Job`, without a worker: a real Redis,
a :class:`WorkerContext` built from its parts, a fake source cache and a fake executor."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from celery_agent import launch, pipeline, state
from celery_agent.context import WorkerContext
from celery_agent.errors import EnvBuildError, SourceError
from celery_agent.executors.base import PreparedEnv
from celery_agent.runner import ProcessOutcome, Usage
from celery_agent.settings import Settings
from celery_agent.source import Checkout
from celery_agent.spec import TaskSpec
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration


class FakeSources:
    """Hands out a folder holding ``train.py`` as the checkout, or fails with ``error``."""

    def __init__(self, root: Path, error: Exception | None = None) -> None:
        self.root, self.error, self.removed = root, error, 0

    def checkout(self, repo: str, dest: Path | None, **_: Any) -> Checkout:
        if self.error is not None:
            raise self.error
        path = self.root / uuid.uuid4().hex[:8]
        path.mkdir(parents=True)
        (path / "train.py").write_text("print('hi')\n")
        return Checkout(path, "a" * 40, repo, False, self.root)

    def remove(self, co: Checkout) -> None:
        self.removed += 1


class FakeExecutor:
    """An executor whose stages are callables the test sets; it runs nothing."""

    def __init__(self) -> None:
        self.on_prepare: Callable[[], None] = lambda: None
        self.on_run: Callable[[], None] = lambda: None
        self.runs = 0
        self.outcome = ProcessOutcome(state.SUCCEEDED, 0, 0.01, 1, 1, ["hi"], Usage())

    def prepare(self, spec: TaskSpec, source_dir: Path, log: Any) -> PreparedEnv:
        self.on_prepare()
        return PreparedEnv(python=sys.executable)

    def command(self, prepared: PreparedEnv, argv: list[str]) -> list[str]:
        return [prepared.python, *argv]

    def run(self, prepared: PreparedEnv, argv: list[str], request: Any) -> ProcessOutcome:
        self.runs += 1
        self.on_run()
        return self.outcome


@pytest.fixture()
def executor(monkeypatch: pytest.MonkeyPatch) -> FakeExecutor:
    fake = FakeExecutor()
    monkeypatch.setattr(pipeline, "get_executor", lambda name, settings: fake)  # (prepare)
    monkeypatch.setattr(launch, "get_executor", lambda name, settings: fake)  # (the run)
    return fake


@pytest.fixture()
def ctx(store: Any, tmp_path: Path) -> Iterator[WorkerContext]:
    settings = Settings(home=tmp_path / "home", claim_ttl=30.0, record_retry=5.0)
    yield WorkerContext.create(settings, store, f"w{uuid.uuid4().hex[:6]}@h", environ={})


def submitted(store: Any, **spec: Any) -> tuple[str, TaskSpec]:
    parsed = TaskSpec(repo="/nowhere", entry="train.py", **spec)
    run_id = uuid.uuid4().hex
    store.create_run(run_id, parsed.to_json(), parsed.queue)
    return run_id, parsed


def with_sources(ctx: WorkerContext, sources: FakeSources) -> WorkerContext:
    return replace(ctx, sources=sources)  # type: ignore[arg-type]


def test_a_run_goes_from_queued_to_succeeded(ctx, executor, store, tmp_path):
    run_id, spec = submitted(store)
    summary = pipeline.Job(run_id, with_sources(ctx, FakeSources(tmp_path))).run(spec)
    record = store.get(run_id)
    assert summary["status"] == record["state"] == state.SUCCEEDED and executor.runs == 1
    assert record["attempt"] == 1 and record["worker"] == ctx.worker
    assert not store.r.exists(store.keys.claim(run_id)), "the claim is released at the end"
    assert run_id not in ctx.registry.current_runs(ctx.worker)


def test_a_second_delivery_while_the_first_holds_the_claim_is_dropped(ctx, executor, store,
                                                                      tmp_path):  # fmt: skip
    run_id, spec = submitted(store)
    other = replace(with_sources(ctx, FakeSources(tmp_path)), worker="other@h")
    seen: list[Exception] = []

    def second_delivery() -> None:
        with pytest.raises(pipeline.DuplicateRun) as err:
            pipeline.Job(run_id, other).run(spec)
        seen.append(err.value)

    executor.on_run = second_delivery
    summary = pipeline.Job(run_id, with_sources(ctx, FakeSources(tmp_path))).run(spec)
    assert "already held by" in str(seen[0]) and executor.runs == 1
    assert summary["status"] == store.get(run_id)["state"] == state.SUCCEEDED
    with pytest.raises(pipeline.DuplicateRun, match="already ended"):
        pipeline.Job(run_id, other).run(spec)  # a redelivery after the end


def test_a_run_cancelled_while_preparing_ends_aborted_without_running(ctx, executor, store,
                                                                      tmp_path):  # fmt: skip
    run_id, spec = submitted(store)
    job = pipeline.Job(run_id, with_sources(ctx, FakeSources(tmp_path)))

    def cancel_and_wait_until_heard() -> None:
        assert store.request_abort(run_id) == state.PREPARING
        # (the cancel reaches the run through pub/sub or its poll)
        wait_for("the run to hear of the cancel", job.stops, 10, every=0.01)

    executor.on_prepare = cancel_and_wait_until_heard
    summary = job.run(spec)
    record = store.get(run_id)
    assert summary["status"] == record["state"] == state.ABORTED and executor.runs == 0
    assert "cancelled while preparing" in record["error"]
    assert not store.r.exists(store.keys.claim(run_id))


def test_a_source_failure_ends_the_run_failed_in_the_source_stage(ctx, executor, store, tmp_path):
    run_id, spec = submitted(store)
    sources = FakeSources(tmp_path, SourceError("no such commit", "push it first"))
    summary = pipeline.Job(run_id, with_sources(ctx, sources)).run(spec)
    record = store.get(run_id)
    assert summary["status"] == record["state"] == state.FAILED and executor.runs == 0
    assert record["error_stage"] == "source" and "no such commit" in record["error"]


def test_an_env_failure_ends_the_run_failed_in_the_env_stage(ctx, executor, store, tmp_path):
    run_id, spec = submitted(store)

    def broken() -> None:
        raise EnvBuildError("pip could not find nosuchpkg", "check the requirement's name")

    executor.on_prepare = broken
    sources = FakeSources(tmp_path)
    summary = pipeline.Job(run_id, with_sources(ctx, sources)).run(spec)
    record = store.get(run_id)
    assert summary["status"] == record["state"] == state.FAILED and executor.runs == 0
    assert record["error_stage"] == "env" and "nosuchpkg" in record["error"]
    assert sources.removed == 1, "the worktree is let go of"


def _died_holding(store: Any, run_id: str, worker: str) -> None:
    """The run as a runner on this machine that died while running it left it."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    store.transition(run_id, state.RUNNING, attempt=1, worker=worker)
    store.r.set(store.keys.claim(run_id), f"{worker}|{socket.gethostname()}|{dead}", px=30_000)


def test_the_claim_of_a_dead_runner_is_taken_over_while_attempts_remain(ctx, executor, store,
                                                                        tmp_path):  # fmt: skip
    run_id, spec = submitted(store, max_attempts=2)
    _died_holding(store, run_id, "gone@h")
    summary = pipeline.Job(run_id, with_sources(ctx, FakeSources(tmp_path))).run(spec)
    record = store.get(run_id)
    assert summary["status"] == record["state"] == state.SUCCEEDED
    assert record["attempt"] == 2 and record["lost_attempts"] == 1


def test_a_run_that_lost_its_runner_with_no_attempt_left_ends_lost(ctx, executor, store, tmp_path):
    run_id, spec = submitted(store, max_attempts=1)
    _died_holding(store, run_id, "gone@h")
    summary = pipeline.Job(run_id, with_sources(ctx, FakeSources(tmp_path))).run(spec)
    record = store.get(run_id)
    assert summary["status"] == record["state"] == state.LOST and executor.runs == 0
    assert "max_attempts is 1" in record["error"]
    assert not store.r.exists(store.keys.claim(run_id))


def test_an_attempt_whose_claim_went_to_another_runner_writes_nothing(ctx, executor, store,
                                                                      tmp_path):  # fmt: skip
    """This runner stalled past its claim and another took the run (and killed this attempt's
    child, so the run 'failed' here): it ends without a final state, result or upload."""
    run_id, spec = submitted(store)
    quick = replace(
        with_sources(ctx, FakeSources(tmp_path)), settings=replace(ctx.settings, claim_ttl=0.8)
    )  # (its claim renewed every 0.2 s)
    job = pipeline.Job(run_id, quick)
    other = f"other@h|{socket.gethostname()}|1"

    def taken_over() -> None:
        store.r.set(store.keys.claim(run_id), other, px=30_000)
        store.transition(run_id, state.RUNNING, attempt=2, worker="other@h")
        wait_for(
            "the keeper's next renewal to see the claim taken",
            lambda: job.held is None or job.held.lost_to is not None,
            10,
            every=0.02,
        )

    executor.on_run = taken_over
    executor.outcome = ProcessOutcome(state.FAILED, -9, 0.01, 1, 1, [], Usage())
    with pytest.raises(pipeline.DuplicateRun, match="other@h"):
        job.run(spec)
    record = store.get(run_id)
    assert record["state"] == state.RUNNING and record["worker"] == "other@h"
    assert record["attempt"] == 2 and "exit_code" not in record
    assert store.r.get(store.keys.claim(run_id)) == other, "the other runner keeps its claim"
    assert not (quick.settings.home / "artifacts" / "runs" / run_id).exists()
