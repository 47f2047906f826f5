"""Commands for running the cluster's processes: `workers`, `services`, `flower`, `redis` and
`exporter`.

Each one execs (or becomes) the process a Procfile, docker-compose or Kubernetes starts, so
signals reach it directly; see ``Procfile`` and ``deploy/``.
"""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path

import click

from .layout import CPU_QUEUES, POOLED, SHARED_QUEUES, plan
from .services import SERVICES_CONCURRENCY, SERVICES_NAME, SERVICES_QUEUE, services_argv


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--queues", "-Q", default=SERVICES_QUEUE, show_default=True, help="queues to serve")
@click.option("--concurrency", "-c", default=SERVICES_CONCURRENCY, show_default=True,
              help="runs at once (threads)")  # fmt: skip
@click.option("--name", "-n", default=SERVICES_NAME, show_default=True, help="worker name")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def services(queues: str, concurrency: int, name: str, celery_args: tuple[str, ...]) -> int:
    """Run a services worker: many light controller runs at once (thread pool, no GPU).

    Extra arguments go to `celery worker` (e.g. --loglevel INFO).
    """
    argv = services_argv(queues, concurrency, name, celery_args)
    os.execv(argv[0], argv)
    return 0  # not reached


@click.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--per-gpu/--pooled",
    "per_gpu",
    default=True,
    show_default=True,
    help="one worker per GPU, or one worker leasing all of them (--dynamic)",
)
@click.option("--gpus", default="all", show_default=True, help="the GPUs to serve: all, 0,1, 0-3")
@click.option(
    "--queues",
    "-Q",
    default=SHARED_QUEUES,
    show_default=True,
    help="queues a GPU worker serves after its own gpuN",
)
@click.option(
    "--cpu-queues",
    default=CPU_QUEUES,
    show_default=True,
    help="queues of the CPU worker run when the machine has no GPU",
)
@click.option("--concurrency", "-c", default=1, show_default=True, help="runs at once per GPU")
@click.option("--dry-run", is_flag=True, help="print the worker commands and exit")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def workers(per_gpu: bool, gpus: str, queues: str, cpu_queues: str, concurrency: int,
            dry_run: bool, celery_args: tuple[str, ...]) -> int:  # fmt: skip
    """Run this machine's workers under one process: one per GPU found (pinned to it, on its own
    queue gpuN, then gpu,default), or one CPU worker on default when there is no GPU. A worker
    that dies is started again; SIGTERM/SIGINT are passed on, so workers drain.

    Extra arguments go to every `celery worker` (e.g. --loglevel INFO).
    """
    from .supervisor import supervise

    layout = plan("per-gpu" if per_gpu else POOLED, gpus, queues, cpu_queues, concurrency)
    lines = [(w.name, w.argv(celery_args)) for w in layout.workers]
    if dry_run:
        click.echo(f"# {layout.reason}")
        for _, argv in lines:
            click.echo(shlex.join(argv))
        return 0
    _log_to_stderr("workers")
    logging.getLogger(__name__).info("%s", layout.reason)
    return supervise(lines)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower(flower_args: tuple[str, ...]) -> int:
    """Run Flower with the celery-agent pages (/celery-agent/runs, /celery-agent/hardware).

    Arguments go to Flower (e.g. --port=5555 --basic-auth=user:pass).
    """
    from celery.bin.celery import celery

    from .flower import install

    install()
    args = ["-A", "celery_agent", "flower", *flower_args]
    result = celery.main(args=args, prog_name="celery", auto_envvar_prefix="CELERY",
                         standalone_mode=False)  # fmt: skip
    return int(result or 0)


@click.command()
@click.option("--port", default=6379, show_default=True, help="TCP port")
@click.option("--bind", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--dir", "data_dir", default=None, help="data folder [CELERY_AGENT_HOME/redis]")
@click.option("--linger", default=4.0, show_default=True,
              help="seconds to wait, once stopped, for the processes using it to leave")  # fmt: skip
def redis(port: int, bind: str, data_dir: str | None, linger: float) -> int:
    """Run the embedded Redis in the foreground (append-only file, log on stdout); on SIGTERM it
    stops once its other clients have left. Uses a Redis that already answers on the port."""
    from .app import get_settings
    from .embedded import EmbeddedRedis
    from .redisservice import serve

    folder = Path(data_dir) if data_dir else get_settings().home / "redis"
    _log_to_stderr("redis")
    return serve(EmbeddedRedis(folder, port=port, host=bind), linger)


@click.command()
@click.option("--port", default=9808, show_default=True, help="TCP port of the metrics endpoint")
@click.option("--bind", default="0.0.0.0", show_default=True, help="address to listen on")
@click.option("--queue", "-Q", "queues", multiple=True,
              help="a queue to report even while no worker serves it (repeat)")  # fmt: skip
def exporter(port: int, bind: str, queues: tuple[str, ...]) -> int:
    """Serve the fleet's Prometheus metrics at http://BIND:PORT/metrics until stopped: queue depth,
    runs, workers, GPUs, read from Redis on each scrape."""
    import signal
    import threading

    from prometheus_client import CollectorRegistry, start_http_server

    from .app import get_settings
    from .exporter import fleet_collector

    settings = get_settings()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(fleet_collector(settings.redis_url, settings.broker, settings.prefix, queues))
    _log_to_stderr("exporter")
    server, thread = start_http_server(port, addr=bind, registry=registry)
    logging.getLogger(__name__).info("serving metrics on http://%s:%d/metrics", bind, port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    thread.join(5)
    return 0


def _log_to_stderr(name: str) -> None:
    """Log this command's INFO lines to stderr (a Procfile line's output), unless set up already."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format=f"[%(asctime)s: %(levelname)s/{name}] %(message)s"
        )
