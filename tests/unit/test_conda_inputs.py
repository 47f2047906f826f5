"""The conda executor's pure parts: reading env files and lock files, keys, tools, activation."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_agent.errors import EnvBuildError
from celery_agent.executors import ExecutorSettings, get_executor
from celery_agent.executors.base import PreparedEnv
from celery_agent.executors.conda import _check_entry
from celery_agent.executors.conda_build import BuildFailure, _record, _solve_failure
from celery_agent.executors.conda_env import activation, find_tool
from celery_agent.executors.conda_inputs import CondaInput, key_parts, read_input
from celery_agent.spec import CondaOptions, TaskSpec

LOCK = """\
version: 1
metadata:
  platforms: [linux-64]
  channels: [{url: conda-forge, used_env_vars: []}]
package:
- name: numpy
  version: 1.26.4
  manager: conda
  platform: linux-64
  dependencies: {python: '>=3.11,<3.12.0a0', libblas: '>=3.9.0'}
  url: https://conda.anaconda.org/conda-forge/linux-64/numpy-1.26.4-py311h64a7726_0.conda
  hash: {md5: a502d7aad449a1206efb366d6a12c52d, sha256: 3f4365e11b28e244c95ba8579942b0802761ba7bb31c026f50d1a9ea9c728149}
- name: tqdm
  version: 4.66.1
  manager: pip
  platform: linux-64
  dependencies: {}
  url: https://files.pythonhosted.org/packages/tqdm-4.66.1-py3-none-any.whl
  hash: {sha256: d302b3c5b53d47bce91fea46679d9c3c6508cf6332229aa1e7d8653723793386}
"""


def read(tmp_path: Path, **options: object) -> CondaInput:
    return read_input(CondaOptions(**options), tmp_path, "linux-64")  # type: ignore[arg-type]


def write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return name


# -- environment.yml ------------------------------------------------------------------------------
def test_environment_file_splits_conda_specs_pip_and_channels(tmp_path):
    text = (
        "name: x\nchannels: [conda-forge, ./local, nodefaults]\n"
        "dependencies:\n  - python=3.11\n  - numpy >=1.26\n  - pip:\n    - tqdm==4.66.1\n"
    )
    inp = read(tmp_path, file=write(tmp_path, "environment.yml", text), pip=["rich"])
    assert inp.kind == "solve" and inp.source == "environment.yml"
    assert inp.specs == ("numpy >=1.26", "python 3.11.*")
    assert inp.channels == ("conda-forge", (tmp_path / "local").resolve().as_uri())
    assert inp.pip == ("tqdm==4.66.1", "rich")


def test_environment_file_without_channels_uses_conda_forge(tmp_path):
    inp = read(tmp_path, file=write(tmp_path, "env.yml", "dependencies: [python]\n"))
    assert inp.channels == ("conda-forge",)


@pytest.mark.parametrize(
    "text, why",
    [
        ("dependencies: [python\n", "not valid YAML"),
        ("- python\n", "YAML mapping"),
        ("dependencies: python\n", "'dependencies' must be a list"),
        ("dependencies: [{conda: [x]}]\n", "neither a spec nor a 'pip:' list"),
        ("channels: conda-forge\ndependencies: [python]\n", "'channels' must be a list"),
    ],
)
def test_malformed_environment_file_names_the_problem(tmp_path, text, why):
    with pytest.raises(EnvBuildError, match="environment.yml is malformed") as err:
        read(tmp_path, file=write(tmp_path, "environment.yml", text))
    assert why in str(err.value)


def test_invalid_spec_is_named(tmp_path):
    with pytest.raises(EnvBuildError, match="conda spec 'numpy >=>= 1' is not valid"):
        read(tmp_path, specs=["numpy >=>= 1"])


def test_missing_environment_file_says_to_commit_it(tmp_path):
    with pytest.raises(EnvBuildError, match="'environment.yml' is not in the checkout"):
        read(tmp_path, file="environment.yml")


# -- lock files -----------------------------------------------------------------------------------
def test_conda_lock_file_gives_exact_records_and_pip_urls(tmp_path):
    inp = read(tmp_path, lock=write(tmp_path, "conda-lock.yml", LOCK))
    assert inp.kind == "records" and not inp.specs
    (record,) = inp.records
    assert record["build"] == "py311h64a7726_0" and record["subdir"] == "linux-64"
    assert record["channel"] == "https://conda.anaconda.org/conda-forge"
    assert "python >=3.11,<3.12.0a0" in record["depends"]
    assert inp.pip == (
        "tqdm @ https://files.pythonhosted.org/packages/tqdm-4.66.1-py3-none-any.whl",
    )
    assert inp.locked == (f"{record['url']}#{record['sha256']}",)


def test_lock_file_without_this_platform_names_both(tmp_path):
    name = write(tmp_path, "conda-lock.yml", LOCK)
    with pytest.raises(EnvBuildError) as err:
        read_input(CondaOptions(lock=name), tmp_path, "linux-aarch64")
    assert "no packages for this worker's platform linux-aarch64" in str(err.value)
    assert "(it locks linux-64)" in str(err.value)


def test_lock_file_of_unknown_format_is_malformed(tmp_path):
    with pytest.raises(EnvBuildError, match="neither a conda-lock.yml nor a pixi.lock"):
        read(tmp_path, lock=write(tmp_path, "x.lock", "foo: 1\n"))


def test_locked_record_becomes_a_repodata_record():
    entry = {
        "name": "numpy",
        "version": "1.26.4",
        "build": "py311_0",
        "subdir": "linux-64",
        "url": "https://example.org/ch/linux-64/numpy-1.26.4-py311_0.conda",
        "channel": "https://example.org/ch",
        "sha256": "00" * 32,
        "depends": ["python >=3.11"],
    }
    record = _record(entry)
    assert record.name.normalized == "numpy" and str(record.build) == "py311_0"
    assert record.file_name == "numpy-1.26.4-py311_0.conda" and record.sha256 == bytes(32)


# -- keys -----------------------------------------------------------------------------------------
def test_key_ignores_spec_order_and_spelling(tmp_path):
    a = key_parts(read(tmp_path, specs=["numpy>=1.26", "python"]), "linux-64", "rattler")
    b = key_parts(read(tmp_path, specs=["python", "numpy >=1.26"]), "linux-64", "rattler")
    c = key_parts(read(tmp_path, specs=["python", "numpy >=1.26"]), "osx-arm64", "rattler")
    assert a == b and a != c


def test_lock_key_is_the_locked_hashes(tmp_path):
    inp = read(tmp_path, lock=write(tmp_path, "conda-lock.yml", LOCK))
    parts = key_parts(inp, "linux-64", "rattler")
    assert parts["locked"] == list(inp.locked) and "specs" not in parts
    changed = LOCK.replace("sha256: 3f43", "sha256: 0000")
    other = read(tmp_path, lock=write(tmp_path, "conda-lock.yml", changed))
    assert key_parts(other, "linux-64", "rattler") != parts


def test_local_channel_key_changes_when_it_is_reindexed(tmp_path):
    (tmp_path / "ch" / "noarch").mkdir(parents=True)
    index = tmp_path / "ch" / "noarch" / "repodata.json"
    index.write_text("{}")
    inp = read(tmp_path, specs=["x"], channels=[(tmp_path / "ch").as_uri()])
    before = key_parts(inp, "linux-64", "rattler")
    index.write_text('{"packages": {}}')
    assert key_parts(inp, "linux-64", "rattler") != before


# -- tools, entries, errors -----------------------------------------------------------------------
def test_auto_tool_prefers_micromamba_on_path_and_falls_back_to_rattler(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_tool("auto") == ("rattler", None)
    fake = tmp_path / "micromamba"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert find_tool("auto") == ("micromamba", str(fake))
    assert find_tool("rattler") == ("rattler", None)


def test_named_tool_missing_from_path_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EnvBuildError, match="conda tool 'mamba' is not on this worker's PATH"):
        find_tool("mamba")


def test_solver_errors_become_messages_with_hints():
    SolverError = type("SolverError", (Exception,), {})
    GatewayError = type("GatewayError", (Exception,), {})
    solve = _solve_failure(SolverError("No candidates were found for nosuch *."))
    channel = _solve_failure(GatewayError("could not find subdir 'noarch'"))
    assert isinstance(solve, BuildFailure) and "nosuch" in solve.message
    assert "cannot be solved" in solve.message and "relax" in solve.hint
    assert "channel could not be read" in channel.message and "channel name" in channel.hint


def spec(entry: str) -> TaskSpec:
    return TaskSpec(repo=".", entry=entry, executor="conda", conda=CondaOptions(specs=["x"]))


def test_python_entry_needs_python_in_the_env_but_executables_do_not():
    _check_entry(spec("train.py"), {"python": "/env/bin/python"})
    _check_entry(spec("run.sh"), {"python": None})
    for entry in ("train.py", "-m pkg.train"):
        with pytest.raises(EnvBuildError, match="needs python"):
            _check_entry(spec(entry), {"python": None})


def test_command_uses_the_env_python_or_runs_the_entry_itself(tmp_path):
    ex = get_executor("conda", ExecutorSettings(cache_root=tmp_path))
    assert ex.unavailable_reason() is None
    assert ex.command(PreparedEnv(python="/e/bin/python"), ["a.py", "-x"]) == [
        "/e/bin/python",
        "a.py",
        "-x",
    ]
    assert ex.command(PreparedEnv(python=""), ["/src/run.sh", "-x"]) == ["/src/run.sh", "-x"]


def test_activation_runs_activate_d_scripts_and_puts_bin_first(tmp_path):
    hooks = tmp_path / "etc" / "conda" / "activate.d"
    hooks.mkdir(parents=True)
    (hooks / "x.sh").write_text('export XTOOL_HOME="$CONDA_PREFIX/share/x"\n')
    found = activation(tmp_path)
    assert found["path"][0] == str(tmp_path / "bin")
    assert found["env"]["CONDA_PREFIX"] == str(tmp_path)
    assert found["env"]["CONDA_DEFAULT_ENV"] == str(tmp_path)
    assert found["env"]["XTOOL_HOME"] == f"{tmp_path}/share/x"
    assert "PATH" not in found["env"] and "PWD" not in found["env"]
