"""This machine's own commands: `celery-agent up` (Redis, a worker and beat here until Ctrl+C) and
`celery-agent config` (the settings in force here, and where each came from)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

EXIT_OK = 0


@click.command()
@click.option("--port", default=6379, show_default=True, help="port of the embedded Redis")
@click.option(
    "--queues", "-Q", default="default", show_default=True, help="queues the worker serves"
)
@click.option("--concurrency", "-c", default=1, show_default=True, help="runs at a time")
@click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="data dir (default: the agent's home)",
)
@click.option("--loglevel", default="INFO", show_default=True, help="the worker's log level")
@click.option("--broker", default=None, help="broker URL, e.g. amqp://... (default: the Redis)")
def up(port: int, queues: str, concurrency: int, home: Path | None, loglevel: str,
       broker: str | None) -> int:  # fmt: skip
    """Run Redis (embedded), a worker and beat on this machine until Ctrl+C."""
    from .app import get_settings
    from .up import Stack, run_up

    settings = get_settings()
    stack = Stack(home=home or settings.home, port=port, queues=queues, concurrency=concurrency, loglevel=loglevel,
                  redis_url=settings.redis_url if "redis_url" in settings.sources else None,
                  broker_url=broker or settings.broker_url)  # fmt: skip
    return run_up(stack, lambda url: _announce(url, stack.broker_url))


def _announce(url: str, broker: str | None) -> None:
    from .cli import err_console

    via = (
        ""
        if not broker
        else "  messages go through the broker given: set CELERY_BROKER_URL to it as well\n"
    )
    err_console.print(
        f"celery-agent is up: Redis at {url}\n{via}"
        f"  submit from a git checkout:  CELERY_AGENT_REDIS_URL={url} celery-agent submit train.py --wait\n"
        "  stop with Ctrl+C",
        markup=False,
    )


@click.command()
def config() -> int:
    """Show the agent settings in force and where each came from (passwords in URLs as ***)."""
    from .cli import console
    from .executors.indexes import mask_text
    from .settings import Settings

    table = Table("setting", "value", "from")
    for name, value, source in Settings.load().describe():
        table.add_row(escape(name), escape(mask_text(str(value))), escape(source))
    console.print(table)
    return EXIT_OK
