"""The hook acts in the run's main process only, and records which parameters it took; the agent
reports the rest as unused. Real interpreters and real child processes, no services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from celery_agent.params import read_resolved, resolve, written_in
from celery_agent.paramusage import describe, find_unused, record, strict_error, usage_file
from celery_agent.spec import TaskSpec

CHILD_PARSER = """\
import argparse, json, sys
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=1.0)
p.add_argument("--process-name", default="child")
a, _ = p.parse_known_args()
sys.stdout.write(json.dumps(vars(a)))
"""

MAIN = """\
import argparse, json, multiprocessing, subprocess, sys

def child_parse(queue):
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--process-name", default="child")
    queue.put(vars(p.parse_known_args([])[0]))

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float, default=0.1)
    a = p.parse_args()
    seen = {"main": a.lr}
    done = subprocess.run([sys.executable, "child_parser.py"], capture_output=True, text=True)
    seen["subprocess"] = json.loads(done.stdout)
    for method in ("spawn", "forkserver", "fork"):
        ctx = multiprocessing.get_context(method)
        queue = ctx.Queue()
        proc = ctx.Process(target=child_parse, args=(queue,))
        proc.start()
        seen[method] = queue.get(timeout=60)
        proc.join(60)
    print(json.dumps(seen))
"""


def run(tmp_path: Path, source: str, params: dict, args: tuple[str, ...] = ()) -> dict:
    (tmp_path / "main.py").write_text(textwrap.dedent(source))
    (tmp_path / "child_parser.py").write_text(CHILD_PARSER)
    new_args, env = resolve(list(args), params, tmp_path / "params.json")
    base = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_AGENT_")}
    done = subprocess.run(
        [sys.executable, "main.py", *new_args], cwd=tmp_path, env=base | env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def usage(tmp_path: Path) -> dict:
    return json.loads(usage_file(tmp_path / "params.json").read_text())


def test_children_neither_get_the_overrides_nor_overwrite_the_record(tmp_path: Path) -> None:
    seen = run(tmp_path, MAIN, {"lr": 0.5, "process_name": "x"})
    assert seen["main"] == 0.5
    for child in ("subprocess", "spawn", "forkserver", "fork"):
        assert seen[child] == {"lr": 1.0, "process_name": "child"}, child
    assert read_resolved(tmp_path / "params.json") == {"lr": 0.5}
    assert usage(tmp_path)["read"] == ["lr"]  # process_name: only children know it


def test_a_script_without_argparse_reads_nothing(tmp_path: Path) -> None:
    run(tmp_path, "print('{}')\n", {"n_trials": 3})
    assert usage(tmp_path) == {"pid": usage(tmp_path)["pid"], "read": [], "environ": False}
    assert find_unused({"n_trials": 3}, [], tmp_path / "params.json") == ["n_trials"]


def test_reading_the_params_variable_counts_as_taking_them(tmp_path: Path) -> None:
    source = "import json, os\nprint(json.dumps(json.loads(os.environ['CELERY_AGENT_PARAMS'])))\n"
    assert run(tmp_path, source, {"n_trials": 3}) == {"n_trials": 3}
    assert usage(tmp_path)["environ"] is True
    assert find_unused({"n_trials": 3}, [], tmp_path / "params.json") == []


def test_the_hooks_own_read_of_the_params_does_not_count(tmp_path: Path) -> None:
    source = """\
    import argparse, json
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float)
    print(json.dumps(vars(p.parse_args())))
    """
    run(tmp_path, source, {"lr": 0.5, "epochs": 2})
    assert usage(tmp_path)["environ"] is False
    assert find_unused({"lr": 0.5, "epochs": 2}, [], tmp_path / "params.json") == ["epochs"]


def test_a_subcommand_option_counts_as_read(tmp_path: Path) -> None:
    source = """\
    import argparse, json
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd")
    fit = sub.add_parser("fit")
    fit.add_argument("--epochs", type=int, default=1)
    print(json.dumps(vars(p.parse_args())))
    """
    seen = run(tmp_path, source, {"epochs": 4}, ("fit",))
    assert seen == {"cmd": "fit", "epochs": 4}
    assert find_unused({"epochs": 4}, ["fit"], tmp_path / "params.json") == []


def test_an_option_written_in_the_args_counts_as_taken(tmp_path: Path) -> None:
    run(tmp_path, "import sys\nprint('{}')\n", {"lr": 0.5}, ("--lr", "0.1"))
    assert find_unused({"lr": 0.5}, ["--lr", "0.1"], tmp_path / "params.json") == []
    assert written_in(["--batch-size=3"], "batch_size")
    assert not written_in(["--", "--lr", "1"], "lr")


def test_no_usage_file_means_unknown(tmp_path: Path) -> None:
    assert find_unused({"lr": 1}, [], tmp_path / "params.json") is None
    assert find_unused({}, [], tmp_path / "params.json") == []


@pytest.mark.parametrize("strict", [False, True])
def test_record_puts_unused_params_in_the_summary_and_the_log(tmp_path: Path, strict: bool):
    run(tmp_path, "print('{}')\n", {"n_trials": 3, "seed": 1})
    spec = TaskSpec(repo="r", entry="t.py", params={"n_trials": 3, "seed": 1}, strict_params=strict)
    summary: dict = {}
    notes: list[str] = []
    error = record(spec, tmp_path / "params.json", summary, notes.append)
    assert summary == {"params": {}, "unused_params": ["n_trials", "seed"]}
    assert notes == [describe(["n_trials", "seed"], spec.params)]
    assert "n_trials=3, seed=1" in notes[0]
    assert (error is not None) is strict
    if error is not None:
        assert "did not use parameters n_trials, seed" in str(error)
        assert "add_argument" in str(error)


def test_strict_error_names_one_parameter_in_the_singular() -> None:
    assert "did not use parameter lr " in f"{strict_error(['lr'])} "


@pytest.mark.parametrize(
    ("read", "took"),
    [
        ("os.environ['CELERY_AGENT_PARAMS']", True),
        ("os.environ.get('CELERY_AGENT_PARAMS')", True),
        ("os.getenv('CELERY_AGENT_PARAMS')", True),
        ("dict(os.environ)", False),  # a copy for a child process (loky does {**os.environ})
        ("{**os.environ}", False),
        ("os.environ.copy()", False),
    ],
)
def test_only_a_read_by_name_takes_the_params_variable(tmp_path: Path, read: str, took: bool):
    run(tmp_path, f"import os\n{read}\nprint('{{}}')\n", {"n_trials": 3})
    assert usage(tmp_path)["environ"] is took


def test_pythons_one_after_another_in_a_shell_entry_each_get_the_params(tmp_path: Path):
    """Each is a main process (the shell is no Python); what they took adds up."""
    for name, option in (("prep.py", "--lr"), ("train.py", "--epochs")):
        (tmp_path / name).write_text(
            f"import argparse\np = argparse.ArgumentParser()\np.add_argument('{option}')\n"
            "a, _ = p.parse_known_args()\nprint(vars(a))\n"
        )
    _, env = resolve([], {"lr": 0.5, "epochs": 3, "seed": 1}, tmp_path / "params.json")
    base = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_AGENT_")}
    script = f"{sys.executable} prep.py && {sys.executable} train.py"
    done = subprocess.run(["sh", "-c", script], cwd=tmp_path, env=base | env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.stdout.split("\n")[:2] == ["{'lr': '0.5'}", "{'epochs': '3'}"], done.stderr
    assert usage(tmp_path)["read"] == ["lr", "epochs"]
    assert find_unused({"lr": 0.5, "epochs": 3, "seed": 1}, [], tmp_path / "params.json") == [
        "seed"
    ]


def test_strict_params_lets_argparse_refuse_an_option_it_does_not_know(tmp_path: Path) -> None:
    source = textwrap.dedent("""\
        import argparse, json
        p = argparse.ArgumentParser()
        p.add_argument("--batch-size", type=int, default=8)
        print(json.dumps(vars(p.parse_args())))
    """)
    (tmp_path / "main.py").write_text(source)
    base = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_AGENT_")}
    outcomes = {}
    for strict in (False, True):
        args, env = resolve([], {"batch_size": 3, "n_trials": 5}, tmp_path / "p.json", None, strict)
        outcomes[strict] = subprocess.run([sys.executable, "main.py", *args], cwd=tmp_path,
                                          env=base | env, capture_output=True, text=True)  # fmt: skip
    assert json.loads(outcomes[False].stdout) == {"batch_size": 3}  # n_trials hidden, reported
    assert outcomes[True].returncode == 2
    assert "unrecognized arguments: --n_trials 5" in outcomes[True].stderr
    args, env = resolve([], {"batch_size": 3}, tmp_path / "p.json", None, True)
    known = subprocess.run([sys.executable, "main.py", *args], cwd=tmp_path, env=base | env,
                           capture_output=True, text=True)  # fmt: skip
    assert json.loads(known.stdout) == {"batch_size": 3}  # (--batch_size shown as --batch-size)
