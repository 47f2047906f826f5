"""A bare Celery app for baselines: the agent's Celery settings, tasks that do only the minimum.

A baseline worker runs ``celery -A benchmarks.baseline_app worker``; the benchmark process calls
:func:`point_at` before sending to it.
"""

from __future__ import annotations

import subprocess

from celery import Celery

from celery_agent import defaults
from celery_agent.settings import Settings


def create_app() -> Celery:
    """A Celery app with the agent's defaults (acks late, prefetch 1, JSON) and no agent code."""
    app = Celery("benchmarks.baseline_app")
    app.add_defaults(defaults.celery_config(Settings.load()))
    return app


app = create_app()


def point_at(url: str) -> None:
    """Use ``url`` as broker and result backend in this process."""
    app.conf.update(broker_url=url, result_backend=url)


@app.task(name="bench.noop")
def noop() -> None:
    """Nothing: a round trip through broker, worker and result backend."""


@app.task(name="bench.spawn")
def spawn(argv: list[str], cwd: str) -> int:
    """Run ``argv`` in ``cwd`` to its end, output read and dropped; return its exit code."""
    done = subprocess.run(
        argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    return done.returncode
