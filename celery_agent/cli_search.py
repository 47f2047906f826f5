"""The ``search`` and ``metrics`` commands of celery-agent."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import ConfigError, SpecError

EXIT_OK, EXIT_ERROR, EXIT_ABORTED = 0, 1, 130
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def load_spec_file(path: Path) -> dict[str, Any]:
    """A base spec from YAML or JSON; a relative local ``repo`` is read from the file's folder."""
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else _yaml(text)
    if not isinstance(data, dict):
        raise SpecError(f"{path} does not hold a spec (a mapping of TaskSpec fields)")
    repo = data.get("repo")
    if isinstance(repo, str) and not _remote(repo) and not Path(repo).is_absolute():
        data["repo"] = str((path.parent / repo).resolve())
    return data


def _remote(repo: str) -> bool:
    return "://" in repo or (":" in repo and "@" in repo.split(":")[0])


def _yaml(text: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise ConfigError("YAML specs need PyYAML", "pip install pyyaml, or write the spec as .json") from None  # fmt: skip
    return yaml.safe_load(text)


@click.command()
@click.argument("base_spec", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))  # fmt: skip
@click.option("--param", "-p", "params", multiple=True, help="a dimension: name=uniform:a:b | loguniform:a:b | int:a:b | choice:x,y")  # fmt: skip
@click.option("--objective", default=None, help="the metric to optimise (its last value per run)")
@click.option("--direction", type=click.Choice(["max", "min"]), default="max", show_default=True)
@click.option("--trials", default=20, show_default=True, help="how many trials to run")
@click.option("--parallel", default=4, show_default=True, help="trials running at once")
@click.option("--sampler", default="random", show_default=True, help="grid, random, optuna or optuna:tpe|cmaes|qmc|gp|random")  # fmt: skip
@click.option("--seed", type=int, default=None, help="seed of the sampler")
@click.option("--storage", default=None, help="Optuna storage, e.g. sqlite:///study.db")
@click.option("--queue", "-q", default=None, help="queue of the trials (default: the spec's)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="results folder (default: ./search-ID)")  # fmt: skip
@click.option("--wait", is_flag=True, help="run here until done, then print the results")
@click.option("--show", "show_id", default=None, help="print the results of a recorded search")
@click.option("--cancel", "cancel_id", default=None, help="cancel a running search and its trials")
@click.option("--search-id", default=None, hidden=True)
def search(base_spec: Path | None, params: tuple[str, ...], objective: str | None, direction: str, trials: int,
           parallel: int, sampler: str, seed: int | None, storage: str | None, queue: str | None,
           out: Path | None, wait: bool, show_id: str | None, cancel_id: str | None, search_id: str | None) -> int:  # fmt: skip
    """Search parameters of BASE_SPEC (a YAML/JSON TaskSpec) for the best OBJECTIVE.

    \b
    celery-agent search base.yaml -p lr=loguniform:1e-4:1e-1 -p depth=choice:2,4,8 \\
        --objective val_acc --direction max --trials 20 --parallel 4 --wait
    """
    if cancel_id or show_id:
        return _cancel(cancel_id) if cancel_id else _show(str(show_id))
    if base_spec is None or not params or not objective:
        raise click.UsageError("give BASE_SPEC, at least one --param and --objective")
    sid = search_id or uuid.uuid4().hex[:12]
    folder = (out or Path.cwd() / f"search-{sid}").resolve()
    if not wait:
        options = {"--objective": objective, "--direction": direction, "--trials": trials,
                   "--parallel": parallel, "--sampler": sampler, "--seed": seed,
                   "--storage": storage, "--queue": queue}  # fmt: skip
        return _detach(sid, folder, [str(base_spec), *_flags(params, options)])
    spec = load_spec_file(base_spec)
    spec = spec | ({"queue": queue} if queue else {})
    return _run(spec, list(params), str(objective), direction, trials, parallel, sampler,
                seed=seed, storage=storage, out_dir=folder, search_id=sid)  # fmt: skip


def _flags(params: tuple[str, ...], options: dict[str, Any]) -> list[str]:
    out = [word for p in params for word in ("--param", p)]
    return out + [w for k, v in options.items() if v is not None for w in (k, str(v))]


def _detach(sid: str, folder: Path, args: list[str]) -> int:
    """Run this same search with --wait in the background; print the search id."""
    folder.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "celery_agent.cli_search", *args, "--wait",
            "--search-id", sid, "--out", str(folder)]  # fmt: skip
    with (folder / "search.log").open("wb") as log:
        subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True)  # fmt: skip
    err_console.print(f"search {sid} runs in the background; results in {folder}", markup=False)
    console.print(sid, markup=False)
    return EXIT_OK


def _run(spec: dict[str, Any], params: list[str], objective: str, direction: Any, trials: int,
         parallel: int, sampler: str, **kw: Any) -> int:  # fmt: skip
    from .app import get_settings, get_store
    from .search.controller import prepare, save_outputs

    search_ = prepare(spec, params, objective, direction, trials, parallel, sampler,
                      store=get_store(), home=get_settings().home, poll=0.5, **kw)  # fmt: skip
    search_.on_trial = _print_trial
    err_console.print(f"search {search_.result.search_id}: {trials} trials, {parallel} at a time", markup=False)  # fmt: skip
    try:
        search_.run()
    except KeyboardInterrupt:
        err_console.print("search cancelled; its running trials were cancelled", markup=False)
    finally:
        save_outputs(search_.result)
    print_result(search_.result)
    if search_.result.state == "cancelled":
        return EXIT_ABORTED
    return EXIT_OK if search_.result.best is not None else EXIT_ERROR


def _print_trial(trial: Any) -> None:
    value = "" if trial.value is None else f" = {trial.value:.6g}"
    err_console.print(f"trial {trial.number} {trial.state}{value} {trial.params} {trial.error}", markup=False)  # fmt: skip


def print_result(result: Any) -> None:
    """The ranked trials table, the best parameters, a terminal plot and where the files are."""
    from .search.plot import terminal_plot
    from .search.results import table_rows

    header, rows = table_rows(result)
    title = escape(f"search {result.search_id} ({result.state}): {result.counts()}")
    table = Table(*(escape(h) for h in header), title=title)
    for row in rows:
        table.add_row(*(escape(str(cell)) for cell in row))
    console.print(table)
    console.print(terminal_plot(result), markup=False)
    best = result.best
    line = "no trial reported the objective" if best is None else f"best: trial {best.number} {result.objective}={best.value:.6g} params {json.dumps(best.params)} (run {best.run_id})"  # fmt: skip
    console.print(line, markup=False)
    console.print(f"results: {result.out_dir}", markup=False)


def _show(search_id: str) -> int:
    from .search.controller import load_search

    print_result(load_search(search_id))
    return EXIT_OK


def _cancel(search_id: str) -> int:
    from .search.controller import cancel_search

    cancel_search(search_id)
    console.print(f"cancel requested for search {search_id}", markup=False)
    return EXIT_OK


@click.command()
@click.argument("run_id")
@click.option("--name", "-n", "names", multiple=True, help="only this metric (repeat)")
@click.option("--json", "as_json", is_flag=True, help="print the series as JSON")
def metrics(run_id: str, names: tuple[str, ...], as_json: bool) -> int:
    """Print the metrics a run reported: every value of each, with its step."""
    from . import metrics as metrics_mod
    from .app import get_store
    from .handle import get_run

    store = get_store()
    run = get_run(run_id)
    found = metrics_mod.all_series(store, run.id)
    found = {n: pts for n, pts in found.items() if not names or n in names}
    if as_json:
        data = {n: [{"step": p.step, "value": p.value, "time": p.time} for p in pts] for n, pts in found.items()}  # fmt: skip
        console.print_json(json.dumps(data))
        return EXIT_OK
    _metrics_table(run.id, found)
    return EXIT_OK


def _metrics_table(run_id: str, found: dict[str, Any]) -> None:
    from .search.plot import sparkline

    if not found:
        console.print(f"run {run_id} reported no metrics", markup=False)
    for name, points in found.items():
        title = escape(f"{name}  {sparkline([p.value for p in points])}")
        table = Table("step", escape(name), title=title)
        for i, p in enumerate(points):
            table.add_row(str(i if p.step is None else p.step), f"{p.value:.6g}")
        console.print(table)


if __name__ == "__main__":
    sys.exit(search.main(standalone_mode=False))  # the background half of `search` without --wait
