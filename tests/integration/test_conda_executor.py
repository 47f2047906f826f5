"""The conda executor with real solves and installs from a local channel the tests build."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from conda_support import (
    conda_lock_text,
    index_channel,
    make_channel,
    tool,
    write_package,
    write_pixi_lock,
)

from celery_agent import submit_task
from celery_agent.errors import EnvBuildError, StageTimeout
from celery_agent.executors import ExecutorSettings, get_executor
from celery_agent.executors.base import PreparedEnv
from celery_agent.spec import TaskSpec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_channel(tmp_path_factory.mktemp("conda") / "channel")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "train.py").write_text("print('hi')\n")
    return folder


def prepare(
    tmp_path: Path, source: Path, conda: dict[str, object], *, entry: str = "run.sh", **kw: object
) -> tuple[PreparedEnv, list[str]]:
    lines: list[str] = []
    settings = ExecutorSettings(cache_root=tmp_path / "envs", **kw)  # type: ignore[arg-type]
    spec = TaskSpec.parse({"repo": ".", "entry": entry, "executor": "conda", "conda": conda})
    prepared = get_executor("conda", settings).prepare(spec, source, lines.append)
    return prepared, lines


def specs(channel: Path, *names: str) -> dict[str, object]:
    return {"specs": list(names), "channels": [channel.as_uri()]}


def run_in(prepared: PreparedEnv, *argv: str) -> str:
    env = dict(prepared.env, PATH=":".join([*prepared.path_prefix, "/usr/bin:/bin"]))
    done = subprocess.run(list(argv), capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


def test_solve_picks_the_version_the_constraint_allows(tmp_path, source, channel):
    old, _ = prepare(tmp_path, source, specs(channel, "catool <2"))
    new, _ = prepare(tmp_path, source, specs(channel, "catool"))
    assert run_in(old, "catool") == "catool 1.0"
    assert run_in(new, "catool") == "catool 2.0"
    assert "catool==1.0" in old.freeze and "catool==2.0" in new.freeze
    assert old.cache_key != new.cache_key


def test_env_python_sees_env_packages_and_activation_variables(tmp_path, source, channel):
    prepared, _ = prepare(tmp_path, source, specs(channel, "python", "camod"))
    prefix = Path(prepared.env["CONDA_PREFIX"])
    assert prepared.python == str(prefix / "bin" / "python")
    code = "import camod, os, sys; print(camod.VERSION, sys.prefix, os.environ['CAMOD_HOME'])"
    out = run_in(prepared, prepared.python, "-c", code)
    assert out == f"0.1 {prefix} {prefix}/share/camod"
    assert prepared.env["CONDA_DEFAULT_ENV"] == str(prefix)
    assert prepared.path_prefix[0] == str(prefix / "bin")


def test_second_prepare_is_a_fast_cache_hit_at_the_same_path(tmp_path, source, channel):
    cold, log = prepare(tmp_path, source, specs(channel, "python", "catool <2"))
    warm, warm_log = prepare(tmp_path, source, specs(channel, "catool<2", "python"))
    assert not cold.cache_hit and warm.cache_hit
    assert warm.python == cold.python and warm.env == cold.env
    assert warm.seconds < 0.1, f"a hit took {warm.seconds:.3f}s"
    assert any(line.startswith("solving ") for line in log)
    assert not any(line.startswith("solving ") for line in warm_log)


def test_environment_file_with_pip_entries_installs_both(tmp_path, source, channel, wheelhouse):
    (source / "environment.yml").write_text(
        f"name: demo\nchannels:\n  - {channel.as_uri()}\n  - nodefaults\n"
        f"dependencies:\n  - python\n  - catool <2\n  - pip:\n    - --find-links {wheelhouse}\n"
        "    - cademo\n"
    )
    prepared, _ = prepare(tmp_path, source, {"file": "environment.yml"})
    assert run_in(prepared, prepared.python, "-c", "import cademo; print(cademo.VERSION)") == "1.0"
    assert run_in(prepared, "catool") == "catool 1.0"
    assert "cademo==1.0" in prepared.freeze and "catool==1.0" in prepared.freeze


def test_pixi_lock_installs_exactly_its_packages(tmp_path, source, channel):
    write_pixi_lock(source / "pixi.lock", channel, ["catool <2", "python"])
    prepared, log = prepare(tmp_path, source, {"lock": "pixi.lock"})
    assert run_in(prepared, "catool") == "catool 1.0"
    assert not any(line.startswith("solving ") for line in log), "a lock installs without a solve"
    assert sorted(prepared.freeze) == ["catool==1.0", f"python=={python_version()}"]


def test_conda_lock_file_installs_exactly_its_packages(tmp_path, source, channel):
    (source / "conda-lock.yml").write_text(conda_lock_text(channel, ["python", "catool", "camod"]))
    prepared, _ = prepare(tmp_path, source, {"lock": "conda-lock.yml"})
    assert run_in(prepared, "catool") == "catool 2.0"
    assert run_in(prepared, prepared.python, "-c", "import camod; print(camod.VERSION)") == "0.1"


def test_conflicting_specs_fail_naming_the_packages(tmp_path, source, channel):
    with pytest.raises(EnvBuildError) as err:
        prepare(tmp_path, source, specs(channel, "caleft", "caright"))
    text = str(err.value)
    assert "cannot be solved" in text
    assert "caleft" in text and "caright" in text and "catool" in text
    assert not list((tmp_path / "envs" / "conda").glob("*/env")), "no partial env is left"


def test_missing_package_fails_naming_it(tmp_path, source, channel):
    with pytest.raises(EnvBuildError, match="nosuchpkg"):
        prepare(tmp_path, source, specs(channel, "nosuchpkg"))


def test_unknown_channel_fails_naming_it(tmp_path, source):
    missing = (tmp_path / "no-channel").as_uri()
    with pytest.raises(EnvBuildError) as err:
        prepare(tmp_path, source, {"specs": ["catool"], "channels": [missing]})
    assert "channel could not be read" in str(err.value) and "no-channel" in str(err.value)


def test_build_past_its_timeout_is_stopped(tmp_path, source, channel):
    start = time.monotonic()
    with pytest.raises(StageTimeout):
        prepare(tmp_path, source, specs(channel, "catool"), build_timeout=0.01)
    assert time.monotonic() - start < 10


def test_env_without_python_runs_the_entry_as_an_executable(tmp_path, source, channel):
    (source / "run.sh").write_text("#!/bin/sh\ncatool from-entry\n")
    (source / "run.sh").chmod(0o755)
    prepared, _ = prepare(tmp_path, source, specs(channel, "catool <2"))
    ex = get_executor("conda", ExecutorSettings(cache_root=tmp_path / "envs"))
    argv = ex.command(prepared, [str(source / "run.sh")])
    assert prepared.python == "" and argv == [str(source / "run.sh")]
    assert run_in(prepared, *argv) == "catool 1.0 from-entry"


def test_python_entry_in_an_env_without_python_fails_naming_the_fix(tmp_path, source, channel):
    with pytest.raises(EnvBuildError, match="add python to the conda specs"):
        prepare(tmp_path, source, specs(channel, "catool"), entry="train.py")


def test_named_tool_creates_the_env(tmp_path, source, channel, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "micromamba"
    fake.write_text(
        "#!/bin/sh\n"
        'while [ "$1" != "--prefix" ]; do shift; done\n'
        'mkdir -p "$2/conda-meta" "$2/bin"\n'
        'echo \'{"name": "catool", "version": "9.9", "build": "0"}\' > "$2/conda-meta/catool.json"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    conda = specs(channel, "catool") | {"tool": "auto"}
    prepared, log = prepare(tmp_path, source, conda)
    assert prepared.installer == "micromamba" and prepared.freeze == ["catool==9.9"]
    assert any("micromamba create --yes --prefix" in line for line in log)


def python_version() -> str:
    import sys

    return ".".join(str(n) for n in sys.version_info[:3])


# -- end to end through a real worker -------------------------------------------------------------
TRAIN = """\
import argparse, os, subprocess
import camod
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.1)
a = p.parse_args()
tool = subprocess.run(["catool"], capture_output=True, text=True).stdout.strip()
print("lr", a.lr, "camod", camod.VERSION, "tool", tool, "prefix", os.environ["CONDA_PREFIX"])
"""


def test_worker_runs_a_program_from_the_conda_env_with_params(worker, make_repo, tmp_path):
    channel = make_channel(tmp_path / "e2e-channel")
    write_package(channel, tool("catool", "3.0"))  # a newer catool the spec's constraint skips
    index_channel(channel)
    repo = make_repo({"train.py": TRAIN})
    conda = {"specs": ["python", "camod", "catool <3"], "channels": [channel.as_uri()]}
    spec = TaskSpec.parse(
        {"repo": str(repo), "entry": "train.py", "queue": worker.queues, "executor": "conda"}
        | {"conda": conda, "params": {"lr": 0.5}}
    )
    out = submit_task.delay(spec).get(timeout=120)
    assert out["status"] == "succeeded", out
    assert out["params"] == {"lr": 0.5}
    line = next(line for line in out["log_tail"] if line.startswith("lr "))
    assert line.startswith("lr 0.5 camod 0.1 tool catool 2.0 prefix ")
    assert line.endswith("/env")
