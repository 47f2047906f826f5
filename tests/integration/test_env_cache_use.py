"""The environment cache through a real worker and real installs: a rerun pinned to its frozen set
reuses the original environment, an environment a running run uses is never evicted, and the
worker's heartbeat (``celery-agent status``) carries the cache's size."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from conftest import write_wheel

from celery_agent import submit
from celery_agent.app import get_registry
from celery_agent.cli_status import env_cache_text
from celery_agent.rerun import respec
from celery_agent.spec import TaskSpec
from celery_agent.tasks import submit_task
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration

#: waits for a flag file, then says whether its environment is still there
HOLDER = """
import os, sys, time
print("holding", sys.prefix, flush=True)
deadline = time.monotonic() + 120
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.05)
import cademo
print("env intact", os.path.exists(os.path.join(sys.prefix, "bin", "python")), cademo.VERSION)
"""


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    folder = tmp_path / "wh"
    for name in ("cademo", "caother", "cathird"):
        write_wheel(folder, name, "1.0", "VERSION = '1.0'\n")
    return folder


def spec_for(repo: Path, queue: str, wheels: Path, req: str, **kw: object) -> TaskSpec:
    fields = {"repo": str(repo), "entry": "hold.py", "queue": queue, "requirements": [req]}
    return TaskSpec.parse(fields | {"find_links": [str(wheels)], "no_index": True} | kw)


def test_a_rerun_with_the_frozen_set_reuses_the_original_environment(
    worker, make_repo, wheels: Path, store
) -> None:
    repo = make_repo({"hold.py": "import cademo\nprint('v', cademo.VERSION)\n"})
    first = submit_task.delay(spec_for(repo, worker.queues, wheels, "cademo>=0.5")).get(timeout=180)
    assert first["status"] == "succeeded", first
    record = store.get(first["run_id"])
    assert record["freeze"] == ["cademo==1.0"] and record["env_hit"] in (False, "False", "0", 0)
    again = respec(record)
    assert again.requirements == ["cademo==1.0"], "the rerun is pinned to the frozen set"
    out = submit_task.delay(again).get(timeout=180)
    assert out["status"] == "succeeded", out
    rerun = store.get(out["run_id"])
    assert rerun["env_key"] == record["env_key"], "the same environment, not a rebuilt twin"
    assert str(rerun["env_hit"]) in ("True", "1", "true")


def test_an_environment_in_use_is_not_evicted_and_status_shows_the_cache(
    make_worker, make_repo, wheels: Path, store, tmp_path: Path
) -> None:
    queue = f"cache-{uuid.uuid4().hex[:6]}"
    w = make_worker(queue, concurrency=2, CELERY_AGENT_MAX_ENVS="1",
                    CELERY_AGENT_HEARTBEAT_INTERVAL="0.5")  # fmt: skip
    repo = make_repo({"hold.py": HOLDER, "other.py": "print('other done')\n"})
    flag = tmp_path / "release"
    holder = submit(spec_for(repo, queue, wheels, "cademo", args=[str(flag)]))
    wait_for("the holder to run", lambda: "holding" in "\n".join(store.read_log(holder.id)[1]), 60)
    held_env = Path(store.get(holder.id)["run_dir"]).parents[1] / "cache" / "envs" / "venv"
    held_env = held_env / store.get(holder.id)["env_key"]

    other = submit(spec_for(repo, queue, wheels, "caother", entry="other.py"))
    assert other.wait(timeout=180)["state"] == "succeeded"
    assert (held_env / "ready").exists(), "max_envs is 1, but the running run's env stays"

    flag.write_text("go")
    done = holder.wait(timeout=60)
    assert done["state"] == "succeeded" and "env intact True 1.0" in done["log_tail"][-1]

    third = submit(spec_for(repo, queue, wheels, "cathird", entry="other.py"))
    assert third.wait(timeout=180)["state"] == "succeeded"
    assert not held_env.exists(), "no longer in use: evicted like any other"

    registry, seen = get_registry(), []

    def measured() -> dict | None:
        name = next((n for n in registry.names() if n.startswith(w.name + "@")), None)
        seen[:] = [(registry.get(name) or {}) if name else None]
        usage = (seen[0] or {}).get("env_cache")
        return usage if usage and usage["entries"] == 1 else None

    try:
        usage = wait_for("the heartbeat to carry the cache's size", measured, timeout=30)
    except AssertionError:
        raise AssertionError(f"last heartbeat: {seen}\n{w.output()[-3000:]}") from None
    assert usage["bytes"] > 0 and usage["max_entries"] == 1
    assert env_cache_text(usage).startswith("1 envs, ")
