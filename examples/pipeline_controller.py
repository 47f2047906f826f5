"""A pipeline controller: run step 1, then step 2 only if step 1 succeeded, on step 1's output.

The controller is itself a run, light and mostly waiting, so it goes to a services worker
(``celery-agent services``: a thread pool, no GPU) while its steps go to ordinary workers. It runs
with the ``local`` executor, which uses the worker's own interpreter (where celery-agent is
installed), and reaches Redis through the variables every run gets (CELERY_AGENT_REDIS_URL, ...)::

    from celery_agent import TaskSpec, submit
    submit(TaskSpec(repo=".", entry="examples/pipeline_controller.py", executor="local",
                    queue="services", args=["--queue", "gpu0"]))

The steps run the controller's own repository at its own commit (and diff), so the pipeline is
reproducible as a whole. Step 1 writes ``rows.csv`` to its output folder; step 2 names it as an
input, ``inputs={"data": "run://STEP1/rows.csv"}``, and its worker, whichever machine it is,
fetches it from the artifact store and gives its path as ``CELERY_AGENT_INPUT_DATA``. Cancelling
the controller cancels the step it is waiting for.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from celery_agent import RunHandle, TaskSpec, get_run, submit
from celery_agent.errors import StateError

PREPARE = "examples/pipeline_step_prepare.py"
TRAIN = "examples/pipeline_step_train.py"
stopping = False


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="run prepare, then train if it succeeded")
    parser.add_argument("--queue", default="default", help="queue of the steps")
    parser.add_argument("--executor", default="venv", help="executor of the steps")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--fail-first", type=int, default=0, help="1: make step 1 fail")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per step")
    return parser.parse_args(argv)


def own_source() -> dict[str, Any]:
    """Repo, commit and diff of this controller run (from its run record), for the steps."""
    record = get_run(os.environ["CELERY_AGENT_RUN_ID"]).info()
    spec = record.get("spec") or {}
    commit = record.get("commit") or spec.get("commit")
    return {"repo": spec["repo"], "commit": commit, "diff": spec.get("diff", "")}


def run_step(label: str, spec: TaskSpec, timeout: float) -> tuple[str, str]:
    """Submit one step, wait for it (cancel it when we are stopped); returns its run id and
    final state."""
    handle = submit(spec)
    print(f"{label}: run {handle.id} queued on {spec.queue}", flush=True)
    state = wait(handle, timeout)
    print(f"{label}: {state}", flush=True)
    return handle.id, state


def wait(handle: RunHandle, timeout: float) -> str:
    """The step's final state; 'aborted' once this controller is asked to stop."""
    left = timeout
    while left > 0:
        if stopping:
            handle.cancel()
            return str(handle.wait(60).get("state"))
        try:
            return str(handle.wait(timeout=1.0).get("state"))
        except StateError:
            left -= 1.0
    handle.cancel()
    return "timed_out"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    source = own_source()
    common = {"queue": args.queue, "executor": args.executor, **source}
    first = TaskSpec(entry=PREPARE, params={"rows": args.rows, "fail": args.fail_first}, **common)
    prepared, state = run_step("step 1 (prepare)", first, args.timeout)
    if state != "succeeded":
        print("step 1 did not succeed: step 2 (train) is skipped", flush=True)
        return 1
    second = TaskSpec(entry=TRAIN, inputs={"data": f"run://{prepared}/rows.csv"}, **common)
    return 0 if run_step("step 2 (train)", second, args.timeout)[1] == "succeeded" else 1


def _stop(signum: int, frame: object) -> None:
    global stopping
    stopping = True


if __name__ == "__main__":
    sys.exit(main())
