"""examples/pipeline_controller.py end to end: a services worker runs the controller, a normal
worker runs its two steps, the second reading the first's output through inputs=run://..."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from celery_agent import TaskSpec, get_run, submit
from celery_agent.services import POOL_ARGS

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FILES = ("pipeline_controller.py", "pipeline_step_prepare.py", "pipeline_step_train.py")


@pytest.fixture()
def cluster(make_worker, make_repo):
    """(repo, services queue, steps queue) with a services worker and a step worker running."""
    services, steps = f"svc-{uuid.uuid4().hex[:6]}", f"steps-{uuid.uuid4().hex[:6]}"
    make_worker(services, concurrency=8, args=POOL_ARGS)
    make_worker(steps, concurrency=1)
    repo = make_repo({f"examples/{name}": (EXAMPLES / name).read_text() for name in FILES})
    return repo, services, steps


def _controller(repo: Path, services: str, steps: str, *extra: str) -> TaskSpec:
    return TaskSpec(repo=str(repo), entry="examples/pipeline_controller.py", executor="local",
                    python=sys.executable, queue=services,
                    args=["--queue", steps, "--executor", "local", "--timeout", "60", *extra])  # fmt: skip


def _step_ids(lines: list[str]) -> list[str]:
    return [line.split(" run ")[1].split()[0] for line in lines if " queued on " in line]


def test_controller_runs_train_after_prepare_succeeded(cluster):
    repo, services, steps = cluster
    run = submit(_controller(repo, services, steps))
    record = run.wait(90)
    lines = list(run.logs())
    assert record["state"] == "succeeded", lines
    first, second = (get_run(i).info() for i in _step_ids(lines))
    assert first["queue"] == second["queue"] == steps
    assert first["state"] == second["state"] == "succeeded"
    assert first["succeeded_at"] <= second["submitted_at"]  # in order, not at once
    assert any("train: 1 epoch(s) on 1000 rows" in x for x in get_run(second["run_id"]).logs())
    assert second["spec"]["inputs"] == {"data": f"run://{first['run_id']}/rows.csv"}
    assert second["inputs"]["data"]["bytes"] == first["artifacts"]["bytes"], "step 1's output"


def test_controller_skips_train_when_prepare_fails(cluster):
    repo, services, steps = cluster
    run = submit(_controller(repo, services, steps, "--fail-first", "1"))
    record = run.wait(90)
    lines = list(run.logs())
    assert record["state"] == "failed"
    (only,) = _step_ids(lines)
    assert get_run(only).state == "failed"
    assert any("step 2 (train) is skipped" in x for x in lines)
