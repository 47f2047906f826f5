"""The celery-agent command: a thin shell over the library (``main(argv) -> int``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from .errors import AgentError
from .params import parse_param
from .spec import TaskSpec

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
EXIT_TIMED_OUT, EXIT_ABORTED = 124, 130
console = Console(highlight=False, soft_wrap=True)  # (messages are never broken mid-line)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code instead of exiting."""
    args = list(sys.argv[1:] if argv is None else argv)
    traceback = "--traceback" in args
    args = [a for a in args if a != "--traceback"]
    try:
        result = cli.main(args=args, prog_name="celery-agent", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE
    except click.exceptions.Abort:
        return EXIT_ABORTED
    except AgentError as exc:
        if traceback:
            raise
        err_console.print(f"error: {exc}", markup=False)
        return EXIT_ERROR
    return int(result or 0)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


@click.group(
    help="Run ML experiments on Celery workers. Add --traceback to any command to debug it."
)
def cli() -> None:
    pass


def _params(values: Sequence[str]) -> dict[str, Any]:
    return dict(parse_param(v) for v in values)


def _env(values: Sequence[str], option: str = "--env") -> dict[str, str]:
    out = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: write it as NAME=value", param_hint=option)
        out[name] = value
    return out


def _with_secrets(env: dict[str, str], names: Sequence[str]) -> dict[str, str]:
    """``env`` plus the value of each ``--secret-env`` name not given by ``--env``, taken from
    this process's environment."""
    for name in names:
        if name in env:
            continue
        if name not in os.environ:
            raise click.BadParameter(
                f"{name} is not set here: export {name} first, or give --env {name}=value",
                param_hint="--secret-env",
            )
        env[name] = os.environ[name]
    return env


@cli.command()
@click.argument("entry")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "--queue", "-q", default="default", show_default=True, help="Celery queue to send it to"
)
@click.option("--param", "-p", "params", multiple=True, help="override a parameter: name=value")
@click.option("--strict-params", is_flag=True, help="fail the run if a parameter goes unused")
@click.option(
    "--req",
    "requirements",
    multiple=True,
    help="a requirement (repeat); default: the repo's own",
)
@click.option(
    "--requirements-file", "-r", "requirements_file", default=None,
    help="a requirements file in the repo (from the submit folder or the repo root)",
)  # fmt: skip
@click.option("--extra", "extras", multiple=True, help="an extra of the project (repeat)")
@click.option("--group", "groups", multiple=True, help="a dependency group of the project (repeat)")
@click.option(
    "--find-links", "find_links", multiple=True, help="a local wheel folder or page (repeat)"
)
@click.option("--index-url", default=None, help="package index to install from")
@click.option("--extra-index-url", "extra_index_urls", multiple=True, help="another index (repeat)")
@click.option("--no-index", is_flag=True, help="install only from --find-links folders")
@click.option("--python", default=None, help="interpreter version or path for the env")
@click.option("--executor", default="venv", show_default=True)
@click.option("--name", default=None, help="a label for the run")
@click.option("--tag", "tags", multiple=True, help="a tag to find the run by (repeat)")
@click.option("--project", default=None, help="the project it counts for (CELERY_AGENT_PROJECT)")
@click.option("--priority", type=int, default=0, show_default=True,
              help="-1 low, 0 normal, 1 high (up to the max_priority setting)")  # fmt: skip
@click.option("--env", "env", multiple=True, help="an environment variable for the run: NAME=value")
@click.option(
    "--secret-env",
    "secret_env",
    multiple=True,
    help="a secret variable (repeat): its value from --env NAME=value or this environment; "
    "runs get it, records, logs and Flower show ***",
)
@click.option(
    "--input", "inputs", multiple=True,
    help="a file the run reads (repeat): NAME=URL, URL run://RUN/path, file:///..., s3://...",
)  # fmt: skip
@click.option("--timeout", type=float, default=None, help="seconds the run may take")
@click.option("--repo", default=None, help="repo URL or path (default: the checkout you are in)")
@click.option(
    "--commit", default=None, help="revision to run (default: HEAD plus your uncommitted changes)"
)
@click.option("--no-diff", is_flag=True, help="run the commit without your uncommitted changes")
@click.option(
    "--require-pushed", is_flag=True, help="refuse a HEAD not pushed (default: send it as a diff)"
)
@click.option(
    "--workdir",
    default=None,
    help="the run's working directory, from where you are (default: the folder you submit from)",
)
@click.option("--wait", is_flag=True, help="follow the log and exit with the run's exit code")
@click.option("--wait-timeout", type=float, default=None, help="with --wait: give up after N s")
@click.option(
    "--require-worker",
    is_flag=True,
    help="fail instead of queueing when no worker serves the queue",
)
def submit(entry: str, args: tuple[str, ...], queue: str, params: tuple[str, ...], strict_params: bool, requirements: tuple[str, ...],
           find_links: tuple[str, ...], index_url: str | None, python: str | None, executor: str, name: str | None, env: tuple[str, ...],
           secret_env: tuple[str, ...], project: str | None, priority: int, timeout: float | None, repo: str | None, commit: str | None, no_diff: bool, requirements_file: str | None, extras: tuple[str, ...], groups: tuple[str, ...],
           require_pushed: bool, workdir: str | None, wait: bool, wait_timeout: float | None, require_worker: bool,
           extra_index_urls: tuple[str, ...] = (), no_index: bool = False, inputs: tuple[str, ...] = (), tags: tuple[str, ...] = ()) -> int:  # fmt: skip
    """Submit ENTRY (a script in this repo, or '-m module'); script arguments go after '--'.

    ENTRY and --workdir are paths from the folder you are in; the run starts in that folder
    (its place in the repository) unless --workdir names another. Commits not pushed yet travel
    in the diff, on top of the last commit the remote has.

    \b
    celery-agent submit train.py --queue gpu0 -p lr=0.5 --wait -- --epochs 3
    celery-agent submit train.py --secret-env WANDB_API_KEY   # value from this environment
    """
    fields = _source_fields(
        repo, commit, no_diff, require_pushed, entry, workdir, requirements_file
    )
    if requirements and requirements_file:
        raise click.BadParameter("give --req or --requirements-file, not both", param_hint="-r")
    run_env = _with_secrets(_env(env), secret_env)
    spec = TaskSpec.parse(
        fields
        | {"args": list(args), "params": _params(params), "queue": queue, "python": python}
        | {"executor": executor, "name": name, "env": run_env, "timeout": timeout}
        | {"project": project, "priority": priority, "tags": list(tags)}
        | {"secret_env": list(secret_env), "strict_params": strict_params}
        | {"inputs": _env(inputs, "--input")}
        | {"find_links": list(find_links), "index_url": index_url, "no_index": no_index}
        | {
            "extra_index_urls": list(extra_index_urls),
            "extras": list(extras),
            "groups": list(groups),
        }
        | ({"requirements": list(requirements)} if requirements else {})
    )
    run = _send(spec, require_worker)
    err_console.print(f"submitted run {run.id} to queue {spec.queue}", markup=False)
    console.print(run.id, markup=False) if not wait else None
    return _follow(run.id, wait_timeout) if wait else EXIT_OK


def _send(spec: TaskSpec, require_worker: bool) -> Any:
    """Submit ``spec``; say so when no online worker serves its queue (or fail, if required)."""
    import warnings

    from .handle import submit as submit_spec
    from .serving import ArtifactStoreWarning, NoWorkerWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoWorkerWarning)  # (said below, in the CLI's words)
        warnings.simplefilter("ignore", ArtifactStoreWarning)
        run = submit_spec(spec, require_worker=require_worker)
    if run.cover is not None and not run.cover.covered:
        err_console.print(f"warning: {run.cover.problem()}", markup=False)
        err_console.print(f"  the run waits until one does: {run.cover.hint()}", markup=False)
    if run.cover is not None and run.cover.broken:
        err_console.print(f"warning: {run.cover.store_problem()}", markup=False)
    return run


def _source_fields(
    repo: str | None,
    commit: str | None,
    no_diff: bool,
    require_pushed: bool,
    entry: str,
    workdir: str | None,
    reqs_file: str | None = None,
) -> dict[str, Any]:
    from .capture import missing_entry, requirements_path
    from .source import capture

    if repo is not None:  # no checkout here: paths are the repository's own
        return {
            "repo": repo,
            "commit": commit,
            "entry": entry,
            "workdir": workdir,
            "requirements_file": reqs_file,
        }
    changes = not (no_diff or commit)  # a named commit runs without your uncommitted changes
    captured = capture(Path.cwd(), changes=changes, require_pushed=require_pushed, revision=commit)
    fields = {"repo": captured.repo, "commit": captured.commit, "diff": captured.diff}
    if captured.unpushed:
        err_console.print(captured.describe_unpushed(), markup=False)
    if not entry.startswith("-m"):
        entry = _in_repo(entry, captured.root, "entry") or "."
    problem = missing_entry(captured.root, entry, fields["commit"], fields["diff"])
    if problem is not None:  # said here, not minutes later by the worker
        raise problem
    return fields | {
        "entry": entry,
        "workdir": _in_repo(workdir or ".", captured.root, "--workdir"),
        "requirements_file": reqs_file and requirements_path(reqs_file, captured.root),
    }


def _in_repo(path: str, root: Path, what: str) -> str | None:
    """A path given from the current folder, as a path from the repository root (None: the
    root itself)."""
    full = (Path.cwd() / path).resolve()
    try:
        relative = full.relative_to(root.resolve()).as_posix()
    except ValueError:
        raise AgentError(
            f"{what} {path!r} is outside the repository {root}", "give a path inside it"
        ) from None
    return None if relative == "." else relative


def _follow(run_id: str, timeout: float | None = None) -> int:
    """Print the run's log until it ends, then a status line; the exit code says the outcome."""
    from .handle import get_run

    run = get_run(run_id)
    for line in run.logs(follow=True, timeout=timeout, notify=_notice):
        console.print(line, markup=False, soft_wrap=True)
    record = run.info()
    err_console.print(outcome_line(record), markup=False)
    return exit_code_of(record)


def _notice(text: str) -> None:
    err_console.print(text, markup=False)


def outcome_line(record: dict[str, Any]) -> str:
    """'run abc succeeded (exit 0) in 12.3s' or 'run abc failed: <error>'."""
    state, code = record.get("state"), record.get("exit_code")
    took = record.get(f"{state}_at") and record.get("submitted_at")
    line = f"run {record['run_id']} {state}" + ("" if code is None else f" (exit {code})")
    if took:
        line += f" in {float(record[f'{state}_at']) - float(record['submitted_at']):.1f}s"
    return line + (f": {record['error']}" if record.get("error") else "")


def exit_code_of(record: dict[str, Any]) -> int:
    """The shell exit code that stands for a run's outcome."""
    state = record.get("state")
    if state == "succeeded":
        return EXIT_OK
    if state == "timed_out":
        return EXIT_TIMED_OUT
    if state == "aborted":
        return EXIT_ABORTED
    code = record.get("exit_code")
    return code if isinstance(code, int) and 0 < code < 256 else EXIT_ERROR


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option("--follow", "-f", is_flag=True, help="keep following until the run ends")
@click.option("--timeout", type=float, default=None, help="with -f: give up after N seconds")
def logs(run_id: str, follow: bool, timeout: float | None) -> int:
    """Print a run's log (RUN: its id, an id prefix or its name); with -f the exit code follows
    the run's outcome."""
    from .handle import get_run

    if follow:
        return _follow(get_run(run_id).id, timeout)
    for line in get_run(run_id).logs():
        console.print(line, markup=False, soft_wrap=True)
    return EXIT_OK


@cli.command()
@click.argument("run_id", metavar="RUN")
def cancel(run_id: str) -> int:
    """Cancel a run (RUN: its id, an id prefix or its name): a queued one never starts, a
    running one is stopped (TERM, grace, KILL)."""
    from .handle import get_run
    from .state import QUEUED, TERMINAL

    run = get_run(run_id)
    was = run.cancel()
    if was == QUEUED:
        text = f"cancelled run {run.id}: it was queued and will not start"
    elif was in TERMINAL:
        text = f"run {run.id} had already ended ({was}): nothing to cancel"
    else:
        text = f"cancel requested for {run.id} (it was {was}); it stops within seconds"
    console.print(text, markup=False)
    return EXIT_OK


@cli.command()
@click.argument("run_id", metavar="RUN")
@click.option("--param", "-p", "params", multiple=True, help="change a parameter: name=value")
@click.option("--queue", "-q", default=None, help="send it to another queue")
@click.option("--project", default=None, help="count it for another project")
@click.option("--env", "env", multiple=True, help="set a variable (a secret one too): NAME=value")
@click.option(
    "--no-pin", is_flag=True, help="resolve requirements again instead of the recorded versions"
)
@click.option("--resume", is_flag=True, help="start from RUN's checkpoints (restored first)")
@click.option("--input", "inputs", multiple=True, help="set or replace an input: NAME=URL")
@click.option("--wait", is_flag=True, help="follow the log and exit with the run's exit code")
@click.option("--wait-timeout", type=float, default=None, help="with --wait: give up after N s")
@click.option("--require-worker", is_flag=True, help="fail when no worker serves the queue")
def rerun(run_id: str, params: tuple[str, ...], queue: str | None, project: str | None,
          env: tuple[str, ...], no_pin: bool, resume: bool, wait: bool, wait_timeout: float | None,
          require_worker: bool, inputs: tuple[str, ...] = ()) -> int:  # fmt: skip
    """Run a past run again (RUN: its id, an id prefix or its name): same commit, diff and
    package versions, with edits.

    Secret variables are not kept with a run: each comes from --env NAME=value or this environment.
    The rerun is yours (your user, your quota); it keeps the run's project unless --project.
    With --resume the new run starts from RUN's checkpoints, restored into its output folder.
    """
    from .app import get_store
    from .handle import get_run
    from .rerun import respec

    record = get_run(run_id).info()
    spec = respec(record, _params(params), queue=queue, project=project, pin=not no_pin,
                  env=_env(env), resume=resume, inputs=_env(inputs, "--input"))  # fmt: skip
    run = _send(spec, require_worker)
    get_store().update(run.id, rerun_of=record["run_id"])
    how = "resuming" if resume else "rerun of"
    err_console.print(f"submitted run {run.id} ({how} {record['run_id']})", markup=False)
    console.print(run.id, markup=False) if not wait else None
    return _follow(run.id, wait_timeout) if wait else EXIT_OK


def _register_commands() -> None:
    from .cli_artifacts import artifacts, pull
    from .cli_local import config, up
    from .cli_quota import quota
    from .cli_retention import delete, keep
    from .cli_runs import list_runs
    from .cli_search import metrics, search
    from .cli_services import exporter, flower, redis, services, workers
    from .cli_show import show
    from .cli_status import health, status

    commands = (show, status, health, search, metrics, workers, services, flower, redis, exporter)
    for command in (*commands, list_runs, quota, artifacts, pull, keep, delete, up, config):
        cli.add_command(command)


_register_commands()
