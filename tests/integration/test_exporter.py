"""`celery-agent exporter`: a real exporter process scraped over HTTP, a real worker and Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from celery_agent import RunHandle, TaskSpec, submit
from celery_agent.embedded import free_port
from celery_agent.exporter import FleetCollector, queue_lists
from celery_agent.testing import wait_for, write_wheel

pytestmark = pytest.mark.integration

CELERY_AGENT = str(Path(sys.executable).with_name("celery-agent"))
NAP = "import time\nprint('napping', flush=True)\ntime.sleep(120)\n"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _parse(text: str) -> Samples:
    """Every sample of an exposition text: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def _scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        return _parse(resp.read().decode())


def _start_exporter(
    env: dict[str, str], log: Path, *args: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    argv = [CELERY_AGENT, "exporter", "--port", str(port), "--bind", "127.0.0.1", *args]
    with log.open("wb") as fh:
        proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    return proc, f"http://127.0.0.1:{port}/metrics"


def _stop(proc: subprocess.Popen[bytes]) -> int:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


@pytest.fixture()
def exporter(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start `celery-agent exporter` (``exporter(*args, **env)``); returns its /metrics URL."""
    started: list[subprocess.Popen[bytes]] = []

    def factory(*args: str, **env: str) -> str:
        log = tmp_path / f"exporter-{len(started)}.log"
        proc, url = _start_exporter(dict(os.environ, **env), log, *args)
        started.append(proc)

        def answers() -> bool:  # (alive at every look)
            if proc.poll() is not None:
                raise RuntimeError(f"the exporter did not start:\n{log.read_text()}")
            _scrape(url)
            return True

        wait_for(
            "the exporter to answer",
            answers,
            30,
            every=0.2,
            retry_on=(OSError,),
            detail=log.read_text,
        )
        return url

    yield factory
    for proc in started:
        assert _stop(proc) == 0  # SIGTERM ends it cleanly


def test_scrape_shows_queue_depth_workers_and_runs_of_a_live_fleet(
    exporter, make_worker, make_repo, store
):
    queue = f"ex-{uuid.uuid4().hex[:6]}"
    worker = make_worker(queue, concurrency=1)
    url = exporter()
    repo = make_repo({"nap.py": NAP})
    spec = TaskSpec(repo=str(repo), entry="nap.py", executor="local", queue=queue)
    before = _scrape(url)
    running = submit(spec)
    wait_for("the first run to start", lambda: running.state == "running", 30, every=0.2)
    waiting = [submit(spec) for _ in range(3)]
    runs: list[RunHandle] = [running, *waiting]
    try:
        assert [store.get(r.id)["state"] for r in waiting] == ["queued"] * 3
        wait_for(
            "the exporter to see the queued runs",
            lambda: _value(_scrape(url), "celery_agent_queue_depth", queue=queue) == 3,
            30,
            every=0.2,
        )
        got = _scrape(url)
        assert _value(got, "celery_agent_up") == 1
        # the depth is the messages in the broker's lists, all priority levels together
        assert sum(store.r.llen(name) for name in queue_lists(queue)) == 3
        assert _value(got, "celery_agent_queue_workers", queue=queue) == 1
        assert _value(got, "celery_agent_runs_active", state="running", queue=queue) == 1
        assert _value(got, "celery_agent_runs_active", state="preparing", queue=queue) is None
        names = [w for (n, labels), _ in got.items() if n == "celery_agent_worker_runs"
                 for k, w in labels if k == "worker" and w.startswith(worker.name + "@")]  # fmt: skip
        assert len(names) == 1
        assert _value(got, "celery_agent_worker_runs", worker=names[0]) == 1
        age = _value(got, "celery_agent_heartbeat_age_seconds", worker=names[0])
        assert age is not None and 0 <= age < 3 * 2.0  # within the heartbeat's TTL
        submitted = _value(got, "celery_agent_runs_submitted_total")
        assert submitted == (_value(before, "celery_agent_runs_submitted_total") or 0) + 4
    finally:
        for r in runs:
            r.cancel()
    wait_for(
        "all four runs to end aborted",
        lambda: all(r.state == "aborted" for r in runs),
        30,
        every=0.2,
    )
    after = _scrape(url)
    aborted = _value(after, "celery_agent_runs_ended_total", state="aborted")
    assert aborted == (_value(before, "celery_agent_runs_ended_total", state="aborted") or 0) + 4
    wait_for(
        "the queue to empty",
        lambda: _value(_scrape(url), "celery_agent_queue_depth", queue=queue) == 0,
        30,
        every=0.2,
    )
    assert _value(_scrape(url), "celery_agent_runs_active", state="running", queue=queue) is None


def test_runs_of_a_live_worker_fill_the_duration_wait_and_env_cache_metrics(
    make_worker, make_repo, store, tmp_path
):
    """Two venv runs through a real worker: the first builds its environment (a miss), the
    second reuses it (a hit); both observe their queue wait and duration in their queue."""
    queue = f"hist-{uuid.uuid4().hex[:6]}"
    make_worker(queue, concurrency=1)
    wheels = tmp_path / "wheels"
    write_wheel(wheels, "cahist", "1.0", "VERSION = '1.0'\n")
    repo = make_repo({"job.py": "import cahist\nprint(cahist.VERSION)\n"})
    spec = TaskSpec.parse({"repo": str(repo), "entry": "job.py", "queue": queue,
                           "requirements": ["cahist"], "find_links": [str(wheels)],
                           "no_index": True})  # fmt: skip
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(store.r, store.keys, store.r))
    before = _parse(generate_latest(registry).decode())
    records = [submit(spec).wait(timeout=180) for _ in range(2)]
    assert [r["state"] for r in records] == ["succeeded", "succeeded"], records
    assert [r["env_hit"] for r in records] == ["0", "1"]
    got = _parse(generate_latest(registry).decode())

    def grew(name: str, **labels: str) -> float:
        return (_value(got, name, **labels) or 0) - (_value(before, name, **labels) or 0)

    duration, wait = "celery_agent_run_duration_seconds", "celery_agent_run_queue_wait_seconds"
    assert _value(got, f"{duration}_count", queue=queue) == 2
    assert _value(got, f"{duration}_bucket", queue=queue, le="+Inf") == 2
    ran = sum(r["succeeded_at"] - r["preparing_at"] for r in records)
    assert _value(got, f"{duration}_sum", queue=queue) == pytest.approx(ran, abs=1e-3)
    assert _value(got, f"{wait}_count", queue=queue) == 2
    waited = sum(r["preparing_at"] - r["submitted_at"] for r in records)
    assert _value(got, f"{wait}_sum", queue=queue) == pytest.approx(waited, abs=1e-3)
    assert grew("celery_agent_env_cache_misses_total", executor="venv") == 1
    assert grew("celery_agent_env_cache_hits_total", executor="venv") == 1
    assert grew("celery_agent_env_build_seconds_count", executor="venv") == 1
    assert grew("celery_agent_env_build_failures_total", executor="venv") == 0


def test_an_exporter_without_redis_serves_up_0_not_an_error(exporter):
    url = exporter(CELERY_AGENT_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    got = _scrape(url)
    assert _value(got, "celery_agent_up") == 0
    assert {name for name, _ in got} == {"celery_agent_up"}  # the rest is absent, not zero


def test_a_malformed_heartbeat_is_skipped_and_the_rest_served(store, worker):
    bad = f"broken-{uuid.uuid4().hex[:6]}@nowhere"
    store.r.hset(store.keys.worker(bad), mapping={"queues": "{not json", "runs": "[]"})
    store.r.expire(store.keys.worker(bad), 30)
    store.r.zadd(store.keys.workers(), {bad: time.time()})
    odd = f"odd-{uuid.uuid4().hex[:6]}@nowhere"
    store.r.hset(store.keys.worker(odd), mapping={"queues": json.dumps(7), "gpus": "[]"})
    store.r.expire(store.keys.worker(odd), 30)
    store.r.zadd(store.keys.workers(), {odd: time.time()})
    try:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(FleetCollector(store.r, store.keys, store.r))
        wait_for(
            "the session worker's heartbeat",
            lambda: store.r.exists(store.keys.worker(_full_name(store, worker.name))) == 1,
            30,
            every=0.2,
        )
        got = _parse(generate_latest(registry).decode())
        assert _value(got, "celery_agent_up") == 1
        assert _value(got, "celery_agent_queue_workers", queue=worker.queues) == 1
        workers = {w for (n, labels), _ in got.items() if n == "celery_agent_worker_runs"
                   for k, w in labels if k == "worker"}  # fmt: skip
        assert bad not in workers and odd not in workers
        assert _full_name(store, worker.name) in workers
    finally:
        store.r.delete(store.keys.worker(bad), store.keys.worker(odd))
        store.r.zrem(store.keys.workers(), bad, odd)


def _full_name(store, short: str) -> str:  # type: ignore[no-untyped-def]
    return next(n for n in store.r.zrange(store.keys.workers(), 0, -1) if n.startswith(short + "@"))


def test_every_metric_the_grafana_dashboard_queries_is_served(store):
    import re

    dashboard = json.loads(
        (Path(__file__).parents[2] / "deploy" / "grafana-dashboard.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queried = {m for e in exprs for m in re.findall(r"celery_agent_\w+", e)}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(store.r, store.keys, store.r))
    text = generate_latest(registry).decode()
    served = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    types = dict(re.findall(r"^# TYPE (\w+) (\w+)", text, re.M))  # families with no sample yet
    served |= set(types) | {f"{n}_total" for n in types if types[n] == "counter"}
    served |= {f"{n}_{end}" for n in types if types[n] == "histogram"
               for end in ("bucket", "sum", "count")}  # fmt: skip
    assert len(queried) >= 10
    assert queried <= served, f"the dashboard queries metrics never served: {queried - served}"


def test_health_exits_0_for_a_live_worker_and_1_naming_the_problem_otherwise(store, worker):
    wait_for(
        "the session worker's heartbeat",
        lambda: any(
            n.startswith(worker.name + "@") for n in store.r.zrange(store.keys.workers(), 0, -1)
        ),
        30,
        every=0.2,
    )
    full = _full_name(store, worker.name)
    alive = subprocess.run(
        [CELERY_AGENT, "health", "--worker", full], capture_output=True, text=True, timeout=60
    )
    assert alive.returncode == 0, alive.stderr
    local = f"{worker.name}@%h" if full.endswith("@" + os.uname().nodename) else full
    assert (
        subprocess.run(
            [CELERY_AGENT, "health", "-w", local], capture_output=True, timeout=60
        ).returncode
        == 0
    )
    gone = subprocess.run(
        [CELERY_AGENT, "health", "-w", "nobody@%h"], capture_output=True, text=True, timeout=60
    )
    assert gone.returncode == 1
    assert "nobody@" in gone.stderr and "no current heartbeat" in gone.stderr
