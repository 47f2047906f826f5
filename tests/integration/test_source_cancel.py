"""The source and env stages are bounded and cancellable: a git remote that never answers, a clone
lock another process holds and a package index that never answers all end within a second of a
cancel, and a stalled source stage at the default deadline."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import filelock
import psutil
import pytest

from celery_agent import submit
from celery_agent.source import _Repo
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture()
def stalled_remote() -> Iterator[str]:
    """An http git URL whose server takes the connection and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield f"http://127.0.0.1:{server.getsockname()[1]}/stalled.git"
    server.close()


def wait_state(store, run_id: str, states: set[str], timeout: float = 60) -> dict:
    return wait_for(
        f"{run_id} to be {' or '.join(sorted(states))}",
        lambda: (r := store.get(run_id))["state"] in states and r,
        timeout,
        every=0.02,
        detail=lambda: f"it is {store.get(run_id)['state']}",
    )


def process_using(url: str, timeout: float = 30) -> None:
    """Wait until a process (git, an installer) has ``url`` on its command line."""
    wait_for(
        f"a process using {url}",
        lambda: any(
            url in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"])
        ),
        timeout,
        every=0.02,
    )


def cancel_takes(run, store, url: str | None = None) -> float:
    """Seconds from the cancel of a preparing run (fetching ``url`` if given) to its end."""
    wait_state(store, run.id, {"preparing"})
    if url is not None:
        process_using(url)
    t0 = time.monotonic()
    run.cancel()
    wait_state(store, run.id, {"aborted", "failed", "succeeded", "timed_out"}, timeout=30)
    return time.monotonic() - t0


def test_cancel_ends_a_fetch_from_a_remote_that_never_answers(worker, stalled_remote, store):
    run = submit({"repo": stalled_remote, "entry": "train.py", "queue": worker.queues,
                  "executor": "local"})  # fmt: skip
    took = cancel_takes(run, store, stalled_remote)
    out = run.result.get(timeout=30)
    assert out["status"] == "aborted" and "cancelled while preparing" in out["error"], out
    assert took < 3, f"cancel took {took:.2f}s (goal: under 1 s; the machine is loaded)"


def test_cancel_ends_a_wait_for_a_clone_lock_another_process_holds(worker, make_repo, store):
    repo = make_repo({"train.py": "print('never')\n"})
    cache = worker.home / "cache" / "git" / _Repo.parse(str(repo)).cache_name
    cache.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(cache.with_name(cache.name + ".lock"))):
        run = submit({"repo": str(repo), "entry": "train.py", "queue": worker.queues,
                      "executor": "local"})  # fmt: skip
        took = cancel_takes(run, store)
    assert run.result.get(timeout=30)["status"] == "aborted"
    assert took < 3, f"cancel took {took:.2f}s (goal: under 1 s; the machine is loaded)"


def test_a_stalled_source_stage_ends_at_the_default_deadline_named_in_the_outcome(
    make_worker, stalled_remote, store
):
    w = make_worker(f"src-{time.monotonic_ns()}", CELERY_AGENT_SOURCE_TIMEOUT="1.5")
    run = submit({"repo": stalled_remote, "entry": "train.py", "queue": w.queues,
                  "executor": "local"})  # fmt: skip
    out = run.result.get(timeout=60)
    assert out["status"] == "timed_out" and out["error_stage"] == "source", out
    assert "source stage timed out after 1.5 s" in out["error"] and "source_timeout" in out["error"]


def test_cancel_ends_an_env_build_whose_package_index_never_answers(worker, make_repo, store,
                                                                    stalled_remote):  # fmt: skip
    repo = make_repo({"train.py": "print('never')\n"})
    index = stalled_remote.replace("/stalled.git", "/simple")
    run = submit({"repo": str(repo), "entry": "train.py", "queue": worker.queues,
                  "requirements": ["nothing-here"], "index_url": index})  # fmt: skip
    took = cancel_takes(run, store, index)
    out = run.result.get(timeout=30)
    assert out["status"] == "aborted" and "cancelled while preparing" in out["error"], out
    assert took < 3, f"cancel took {took:.2f}s (goal: under 1 s; the machine is loaded)"
