"""Parameter overrides: argv rewrite, the argparse hook in a real child interpreter, environment."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_agent.errors import SpecError
from celery_agent.params import (
    HOOK_DIR,
    format_value,
    hook_env,
    read_resolved,
    resolve,
    rewrite_argv,
)
from celery_agent.spec import ParamValue

TRAIN = """
import argparse, json, sys
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--batch-size", type=int, default=8)
p.add_argument("--amp", action="store_true")
p.add_argument("--optim", choices=["sgd", "adam"], default="sgd")
p.add_argument("--layers", type=int, nargs="+", default=[1])
args = p.parse_args()
print(json.dumps({"ns": vars(args), "argv": sys.argv[1:]}))
"""


def run_script(
    tmp_path: Path,
    source: str,
    args: list[str],
    params: dict[str, ParamValue],
    extra_env: dict[str, str] | None = None,
    base_pythonpath: str | None = None,
    python: str = sys.executable,
) -> subprocess.CompletedProcess[str]:
    """Run ``source`` in a child interpreter the way a run is started: rewritten args, hook env."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(source))
    new_args, env = resolve(args, params, tmp_path / "params.json", base_pythonpath)
    child_env = {**os.environ, **env, **(extra_env or {})}
    return subprocess.run(
        [python, str(script), *new_args],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def seen(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """What the script printed: its namespace and its argv."""
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- format_value / rewrite_argv --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [("adam", "adam"), (0.5, "0.5"), (1e-05, "1e-05"), (3, "3"), (True, "true"), (None, "null")],
)
def test_format_value_writes_str_as_is_and_others_as_json(value: ParamValue, text: str) -> None:
    assert format_value(value) == text


def test_rewrite_replaces_space_and_equals_forms() -> None:
    assert rewrite_argv(["--lr", "0.1", "x"], {"lr": 0.5}) == (["--lr", "0.5", "x"], [])
    assert rewrite_argv(["--lr=0.1"], {"lr": 0.5}) == (["--lr=0.5"], [])


def test_rewrite_matches_dash_and_underscore_variants() -> None:
    assert rewrite_argv(["--batch-size", "8"], {"batch_size": 32}) == (["--batch-size", "32"], [])
    assert rewrite_argv(["--batch_size=8"], {"batch-size": 32}) == (["--batch_size=32"], [])


def test_rewrite_appends_absent_params_and_names_them() -> None:
    new, appended = rewrite_argv(["data.csv"], {"lr": 0.5, "optim": "adam"})
    assert new == ["data.csv", "--lr", "0.5", "--optim", "adam"]
    assert appended == ["lr", "optim"]


def test_rewrite_bool_keeps_adds_or_removes_a_flag() -> None:
    assert rewrite_argv(["--amp", "--lr", "1"], {"amp": True}) == (["--amp", "--lr", "1"], [])
    assert rewrite_argv(["--amp", "--lr", "1"], {"amp": False}) == (["--lr", "1"], [])
    assert rewrite_argv([], {"amp": True}) == (["--amp"], ["amp"])
    assert rewrite_argv([], {"amp": False}) == ([], [])


def test_rewrite_bool_replaces_a_written_bool_word_but_not_a_positional() -> None:
    assert rewrite_argv(["--amp", "yes"], {"amp": False}) == (["--amp", "false"], [])
    assert rewrite_argv(["--amp", "data.csv"], {"amp": False}) == (["data.csv"], [])


def test_rewrite_skips_none_params() -> None:
    assert rewrite_argv(["--lr", "0.1"], {"lr": None, "wd": None}) == (["--lr", "0.1"], [])


def test_rewrite_keeps_one_occurrence_of_a_repeated_option() -> None:
    assert rewrite_argv(["--lr", "1", "--lr=2", "-v"], {"lr": 3}) == (["--lr", "3", "-v"], [])


def test_rewrite_leaves_words_after_double_dash_and_appends_before_it() -> None:
    new, _ = rewrite_argv(["--", "--lr", "1"], {"lr": 3})
    assert new == ["--lr", "3", "--", "--lr", "1"]


def test_rewrite_attaches_values_that_start_with_a_dash() -> None:
    assert rewrite_argv(["--lr", "1"], {"lr": -0.5}) == (["--lr=-0.5"], [])
    assert rewrite_argv(["--lr", "-1"], {"lr": 2}) == (["--lr", "2"], [])
    assert rewrite_argv([], {"tag": "-x"}) == (["--tag=-x"], ["tag"])


def test_rewrite_rejects_two_params_naming_one_option() -> None:
    with pytest.raises(SpecError, match="name the same option"):
        rewrite_argv([], {"batch_size": 1, "batch-size": 2})


_names = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
_values = st.one_of(
    st.text(st.characters(codec="ascii", exclude_characters="\x00"), max_size=8),
    st.integers(-1000, 1000),
    st.floats(allow_nan=False, allow_infinity=False),
)
_user_words = st.lists(st.from_regex(r"(--u[a-z]{1,4}|u[a-z0-9]{0,4}|-[0-9])", fullmatch=True))


@given(user=_user_words, params=st.dictionaries(_names, _values, max_size=4))
def test_rewrite_never_drops_user_words_and_sets_each_override_once(
    user: list[str], params: dict[str, ParamValue]
) -> None:
    params = {f"p{name}": value for name, value in params.items()}  # never a user option
    new, appended = rewrite_argv(user, params)
    assert new[: len(user)] == user
    assert set(appended) == set(params)
    for name, value in params.items():
        text = format_value(value)
        pair = [f"--{name}={text}"] if text.startswith("-") else [f"--{name}", text]
        starts = [i for i, w in enumerate(new) if w.partition("=")[0] == f"--{name}"]
        assert len(starts) == 1
        assert new[starts[0] : starts[0] + len(pair)] == pair


# -- environment and files --------------------------------------------------------------------


def test_hook_dir_is_a_plain_directory_with_the_hook() -> None:
    assert HOOK_DIR.is_absolute()
    assert (HOOK_DIR / "sitecustomize.py").is_file()
    assert not (HOOK_DIR / "__init__.py").exists()


@pytest.mark.parametrize("name", ["sitecustomize.py", "_celery_agent_argparse.py"])
def test_hook_source_is_valid_python_3_8(name: str) -> None:
    source = (HOOK_DIR / name).read_text()
    ast.parse(source, feature_version=(3, 8))
    assert "removeprefix" not in source and "match " not in source


def test_hook_imports_nothing_at_start_and_patches_argparse_when_imported(tmp_path: Path) -> None:
    """A program that never imports argparse pays for no import (json and argparse pull in re);
    one that does gets the override."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_AGENT_")}
    env |= hook_env({"lr": 0.5}, tmp_path / "o.json", ["lr"])
    probe = "import sys; print(sorted({'json', 're', 'argparse', '_celery_agent_argparse'} & set(sys.modules)))"
    plain = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert done.stdout == plain.stdout, done.stderr  # (this venv's .pth files may import re)
    assert "argparse" not in done.stdout
    parse = (
        "import argparse; p = argparse.ArgumentParser(); p.add_argument('--lr', type=float);"
        " print(p.parse_args([]).lr)"
    )
    done = subprocess.run([sys.executable, "-c", parse], env=env, capture_output=True, text=True)
    assert done.stdout.strip() == "0.5", done.stderr
    assert json.loads((tmp_path / "o.json").read_text()) == {"lr": 0.5}


def test_hook_env_puts_the_hook_first_and_carries_params_as_json(tmp_path: Path) -> None:
    env = hook_env({"lr": 0.5}, tmp_path / "o.json", ["lr"], base_pythonpath="/a:/b")
    assert env["PYTHONPATH"] == f"{HOOK_DIR}{os.pathsep}/a:/b"
    assert json.loads(env["CELERY_AGENT_PARAMS"]) == {"lr": 0.5}
    assert env["CELERY_AGENT_PARAMS_OUT"] == str(tmp_path / "o.json")
    assert json.loads(env["CELERY_AGENT_APPENDED"]) == ["lr"]
    assert hook_env({}, tmp_path / "o.json", [])["PYTHONPATH"] == str(HOOK_DIR)


def test_read_resolved_is_none_for_a_missing_or_broken_file(tmp_path: Path) -> None:
    assert read_resolved(tmp_path / "absent.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert read_resolved(tmp_path / "bad.json") is None
    (tmp_path / "good.json").write_text('{"lr": 0.5}')
    assert read_resolved(tmp_path / "good.json") == {"lr": 0.5}


def test_resolve_removes_a_stale_out_file(tmp_path: Path) -> None:
    out = tmp_path / "params.json"
    out.write_text('{"old": 1}')
    args, env = resolve(["--lr", "1"], {"lr": 2}, out)
    assert args == ["--lr", "2"]
    assert env["CELERY_AGENT_PARAMS_OUT"] == str(out)
    assert not out.exists()


# -- the hook in a real interpreter ------------------------------------------------------------


def test_hook_sets_an_absent_option_with_its_type_and_records_defaults(tmp_path: Path) -> None:
    out = seen(run_script(tmp_path, TRAIN, [], {"lr": 0.5}))
    assert out["ns"]["lr"] == 0.5
    resolved = read_resolved(tmp_path / "params.json")
    assert resolved == {"lr": 0.5, "batch_size": 8, "amp": False, "optim": "sgd", "layers": [1]}


@pytest.mark.parametrize("args", [["--lr", "0.1"], ["--lr=0.1"]])
def test_override_replaces_a_written_option_in_argv_and_namespace(
    tmp_path: Path, args: list[str]
) -> None:
    out = seen(run_script(tmp_path, TRAIN, args, {"lr": 0.5}))
    assert out["ns"]["lr"] == 0.5
    assert "0.1" not in " ".join(out["argv"]) and "0.5" in " ".join(out["argv"])


def test_underscore_param_sets_a_dashed_option(tmp_path: Path) -> None:
    out = seen(run_script(tmp_path, TRAIN, [], {"batch_size": "32"}))
    assert out["ns"]["batch_size"] == 32
    assert out["argv"] == ["--batch_size", "32"]


@pytest.mark.parametrize("value", [True, "true", "yes", 1])
def test_store_true_flag_takes_a_bool_or_a_bool_word(tmp_path: Path, value: ParamValue) -> None:
    assert seen(run_script(tmp_path, TRAIN, [], {"amp": value}))["ns"]["amp"] is True


def test_false_override_clears_a_written_flag(tmp_path: Path) -> None:
    out = seen(run_script(tmp_path, TRAIN, ["--amp"], {"amp": "false"}))
    assert out["ns"]["amp"] is False


def test_list_option_takes_a_json_list_or_one_value(tmp_path: Path) -> None:
    assert seen(run_script(tmp_path, TRAIN, [], {"layers": "[2, 3]"}))["ns"]["layers"] == [2, 3]
    assert seen(run_script(tmp_path, TRAIN, [], {"layers": 4}))["ns"]["layers"] == [4]


def test_none_param_sets_none(tmp_path: Path) -> None:
    assert seen(run_script(tmp_path, TRAIN, ["--lr", "0.3"], {"lr": None}))["ns"]["lr"] is None


def test_appended_option_unknown_to_the_parser_stays_only_in_sys_argv(tmp_path: Path) -> None:
    source = "import argparse, json, sys\nargparse.ArgumentParser().parse_args()\nprint(json.dumps({'ns': {}, 'argv': sys.argv[1:]}))"
    out = seen(run_script(tmp_path, source, [], {"lr": 0.5, "amp": True}))
    assert out["argv"] == ["--lr", "0.5", "--amp"]
    assert read_resolved(tmp_path / "params.json") == {}


def test_unknown_option_the_user_wrote_still_fails(tmp_path: Path) -> None:
    source = "import argparse\nargparse.ArgumentParser().parse_args()"
    proc = run_script(tmp_path, source, ["--lr", "0.1"], {"lr": 0.5})
    assert proc.returncode == 2
    assert "unrecognized arguments: --lr 0.5" in proc.stderr


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"lr": "abc"}, "argument --lr: invalid float value: 'abc'"),
        ({"optim": "rmsprop"}, "argument --optim: invalid choice: 'rmsprop'"),
        ({"amp": "maybe"}, "argument --amp: invalid boolean value: 'maybe'"),
    ],
)
def test_a_value_the_option_rejects_is_reported_by_argparse(
    tmp_path: Path, params: dict[str, ParamValue], message: str
) -> None:
    proc = run_script(tmp_path, TRAIN, [], params)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "usage:" in proc.stderr


def test_script_without_argparse_sees_params_in_the_environment(tmp_path: Path) -> None:
    source = "import json, os\nprint(json.dumps({'ns': json.loads(os.environ['CELERY_AGENT_PARAMS']), 'argv': []}))"
    out = seen(run_script(tmp_path, source, [], {"lr": 0.5}))
    assert out["ns"] == {"lr": 0.5}
    assert read_resolved(tmp_path / "params.json") is None


def test_out_file_records_only_the_first_parse(tmp_path: Path) -> None:
    source = TRAIN + "p.parse_args(['--lr', '9'])\n"
    seen(run_script(tmp_path, source, [], {"batch_size": 3}))
    resolved = read_resolved(tmp_path / "params.json")
    assert resolved is not None
    assert resolved["lr"] == 0.1 and resolved["batch_size"] == 3


def test_subcommand_parsers_are_left_to_parse_their_own_options(tmp_path: Path) -> None:
    source = """
    import argparse, json, sys
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float, default=0.1)
    sub = p.add_subparsers(dest="cmd")
    sub.add_parser("fit").add_argument("--epochs", type=int, default=1)
    args = p.parse_args()
    print(json.dumps({"ns": vars(args), "argv": sys.argv[1:]}))
    """
    out = seen(run_script(tmp_path, source, ["fit"], {"lr": 0.5, "epochs": 3, "cmd": "x"}))
    assert out["ns"] == {"lr": 0.5, "cmd": "fit", "epochs": 3}
    assert out["argv"] == ["fit", "--lr", "0.5", "--epochs", "3", "--cmd", "x"]


def test_without_params_the_script_behaves_as_without_the_hook(tmp_path: Path) -> None:
    args = ["--lr", "0.2", "--amp", "--layers", "5", "6"]
    hooked = run_script(tmp_path, TRAIN, args, {})
    plain = subprocess.run(
        [sys.executable, str(tmp_path / "train.py"), *args], capture_output=True, text=True
    )
    assert hooked.returncode == plain.returncode == 0
    assert hooked.stdout == plain.stdout
    assert hooked.stderr == plain.stderr == ""


def test_the_shadowed_sitecustomize_still_runs(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['CHAINED'] = 'yes'\n")
    source = "import json, os\nprint(json.dumps({'ns': {'chained': os.environ.get('CHAINED')}, 'argv': []}))"
    out = seen(run_script(tmp_path, source, [], {"lr": 1}, base_pythonpath=str(other)))
    assert out["ns"]["chained"] == "yes"


def test_a_failing_shadowed_sitecustomize_is_reported_on_one_line(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("raise RuntimeError('boom')\n")
    proc = run_script(tmp_path, TRAIN, [], {"lr": 0.5}, base_pythonpath=str(other))
    assert seen(proc)["ns"]["lr"] == 0.5
    assert proc.stderr == "celery-agent: the next sitecustomize failed: RuntimeError: boom\n"


def test_broken_hook_input_is_reported_and_the_script_runs(tmp_path: Path) -> None:
    proc = run_script(tmp_path, TRAIN, ["--lr", "0.2"], {}, {"CELERY_AGENT_PARAMS": "{oops"})
    assert seen(proc)["ns"]["lr"] == 0.2
    assert proc.stderr.startswith("celery-agent: parameter overrides are off: JSONDecodeError")


def test_an_unwritable_out_file_is_reported_and_the_script_runs(tmp_path: Path) -> None:
    missing = str(tmp_path / "no" / "such" / "dir.json")
    proc = run_script(tmp_path, TRAIN, [], {"lr": 0.5}, {"CELERY_AGENT_PARAMS_OUT": missing})
    assert seen(proc)["ns"]["lr"] == 0.5
    first, second = proc.stderr.splitlines()  # once each, the run goes on
    assert first.startswith("celery-agent: could not record which parameters were used")
    assert second.startswith("celery-agent: could not record the resolved parameters")


def other_python(version: str) -> str | None:
    """The real path of a working interpreter of that version on PATH (a pyenv shim is resolved)."""
    exe = shutil.which(f"python{version}")
    if exe is None:
        return None
    env = {**os.environ, "PYENV_VERSION": version}
    code = "import sys; print(sys.executable)"
    probe = subprocess.run([exe, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    return probe.stdout.strip() or None if probe.returncode == 0 else None


@pytest.mark.parametrize("version", ["3.8", "3.9", "3.12", "3.13"])
def test_hook_works_in_other_python_versions(tmp_path: Path, version: str) -> None:
    python = other_python(version)
    if python is None:
        pytest.skip(f"no working python{version} here")
    env = {"PYENV_VERSION": version}
    params: dict[str, ParamValue] = {"batch_size": "32", "amp": True, "layers": "[2]", "x": 1}
    out = seen(run_script(tmp_path, TRAIN, ["--lr=1"], params, env, python=python))
    assert out["ns"] == {"lr": 1.0, "batch_size": 32, "amp": True, "optim": "sgd", "layers": [2]}
    assert read_resolved(tmp_path / "params.json") == out["ns"]
    bad = run_script(tmp_path, TRAIN, [], {"lr": "abc"}, env, python=python)
    assert bad.returncode == 2 and "invalid float value: 'abc'" in bad.stderr
