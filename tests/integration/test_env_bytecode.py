"""When an environment's packages get their bytecode: at build, in the background, or on import,
with real uv and pip installs from a local wheel."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import write_wheel

from celery_agent.errors import EnvBuildError
from celery_agent.executors import ExecutorSettings, get_executor
from celery_agent.spec import TaskSpec
from celery_agent.testing import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    folder = tmp_path / "wh"
    write_wheel(folder, "cabyte", "1.0", "VALUE = 7\n")
    return folder


def prepare(tmp_path: Path, wheels: Path, installer: str, bytecode: str) -> Path:
    settings = ExecutorSettings(tmp_path / "envs", installer=installer, bytecode=bytecode)
    spec = TaskSpec.parse({"repo": ".", "entry": "t.py", "requirements": ["cabyte"]}
                          | {"find_links": [str(wheels)], "no_index": True})  # fmt: skip
    source = tmp_path / "src"
    source.mkdir(exist_ok=True)
    prepared = get_executor("venv", settings).prepare(spec, source, lambda _: None)
    return Path(prepared.python).parent.parent


def compiled(env: Path) -> list[Path]:
    return list(env.glob("lib/python*/site-packages/__pycache__/cabyte.*.pyc"))


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_import_mode_leaves_compiling_to_the_first_import(
    tmp_path: Path, wheels: Path, installer: str
) -> None:
    env = prepare(tmp_path, wheels, installer, "import")
    assert compiled(env) == [], "nothing compiled at build"
    # (a run's environment is built from an allow-list: no PYTHONDONTWRITEBYTECODE)
    subprocess.run([str(env / "bin" / "python"), "-c", "import cabyte"], check=True, env={})
    assert len(compiled(env)) == 1, "python wrote the .pyc as it imported the module"


def test_build_mode_compiles_everything_before_the_run(tmp_path: Path, wheels: Path) -> None:
    assert len(compiled(prepare(tmp_path, wheels, "uv", "build"))) == 1


def test_background_mode_compiles_after_the_build_returns(tmp_path: Path, wheels: Path) -> None:
    env = prepare(tmp_path, wheels, "uv", "background")
    wait_for("the background compile", lambda: compiled(env), 30)
    assert len(compiled(env)) == 1


def test_an_unknown_bytecode_mode_is_an_error_naming_the_setting(
    tmp_path: Path, wheels: Path
) -> None:
    with pytest.raises(EnvBuildError, match="env_bytecode 'later' is unknown"):
        prepare(tmp_path, wheels, "uv", "later")
