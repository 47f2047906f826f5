"""Where a run's environment comes from, through a real worker with real installs.

The repositories are laid out like real ones: examples in subfolders with their own requirements
and ``-r`` includes, a src-layout package locked with ``uv lock``, one with a pylock.toml made by
``uv export``, one with a poetry.lock, a pyproject.toml without a lock. Wheels come from a local
wheelhouse made on the spot (no index is needed).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from conftest import git, write_wheel

from celery_agent import TaskSpec, submit_task
from celery_agent.executors.venv import uv_binary

pytestmark = pytest.mark.integration

RUN_PKG = "import mypkg, cademo\nprint('code', mypkg.CODE, 'dep', cademo.VERSION)\n"


@pytest.fixture()
def wheels(tmp_path: Path) -> Path:
    """cademo 1.0 and 2.0, caextra 0.1."""
    folder = tmp_path / "wheels"
    write_wheel(folder, "cademo", "1.0", "VERSION = '1.0'\n")
    write_wheel(folder, "cademo", "2.0", "VERSION = '2.0'\n")
    write_wheel(folder, "caextra", "0.1", "NAME = 'extra'\n")
    return folder


def run(worker, repo: Path, entry: str, wheels: Path, **fields: object) -> dict:
    spec = {"repo": str(repo), "entry": entry, "queue": worker.queues, "find_links": [str(wheels)]}
    out = submit_task.delay(TaskSpec.parse(spec | fields)).get(timeout=180)
    assert out["status"] == "succeeded", out
    return out


def commit(repo: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (repo / rel).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "change")


def uv(cwd: Path, *args: str) -> None:
    uv_exe = uv_binary()
    assert uv_exe is not None, "uv is installed with the project's extras"
    env = dict(os.environ, UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never")
    subprocess.run([uv_exe, *args], cwd=cwd, env=env, check=True, capture_output=True)


def pyproject(deps: str) -> str:
    return (
        f'[project]\nname = "mypkg"\nversion = "0.1"\nrequires-python = ">=3.9"\n'
        f"dependencies = [{deps}]\n"
    )


def test_an_example_folder_installs_its_own_requirements_and_their_includes(
    worker, make_repo, wheels, store
):
    repo = make_repo({
        "requirements.txt": "no-such-package-at-all\n",  # the root's: installing it would fail
        "examples/common.txt": "cademo==1.0\n",
        "examples/sk/requirements.txt": "-r ../common.txt\ncaextra\n",
        "examples/sk/train.py": "import cademo, caextra\nprint('dep', cademo.VERSION, caextra.NAME)\n",
    })  # fmt: skip
    first = run(worker, repo, "examples/sk/train.py", wheels)
    assert "dep 1.0 extra" in first["log_tail"]
    record = store.get(first["run_id"])
    assert record["env_source"].startswith("examples/sk/requirements.txt (sha256 ")
    _, lines = store.read_log(first["run_id"])
    assert any(
        line.startswith("[celery-agent] env: requirements from examples/sk/") for line in lines
    )
    commit(repo, {"examples/common.txt": "cademo==2.0\n"})  # only the included file changes
    second = run(worker, repo, "examples/sk/train.py", wheels)
    assert "dep 2.0 extra" in second["log_tail"]
    assert store.get(second["run_id"])["env_key"] != record["env_key"]


def test_a_requirements_file_named_by_the_spec_wins_over_the_one_beside_the_entry(
    worker, make_repo, wheels, store
):
    repo = make_repo({
        "envs/new.txt": "cademo==2.0\n",
        "train.py": "import cademo\nprint('dep', cademo.VERSION)\n",
        "requirements.txt": "cademo==1.0\n",
    })  # fmt: skip
    out = run(worker, repo, "train.py", wheels, requirements_file="envs/new.txt")
    assert "dep 2.0" in out["log_tail"]
    assert store.get(out["run_id"])["env_source"].startswith("envs/new.txt (sha256 ")


def test_a_uv_lock_is_installed_exactly_and_reused_while_it_stays_the_same(
    worker, make_repo, wheels, store
):
    repo = make_repo({
        "pyproject.toml": pyproject('"cademo<2"'),
        "src/mypkg/__init__.py": "CODE = 'one'\n",
        "examples/run.py": RUN_PKG,
        "requirements.txt": "no-such-package-at-all\n",  # a lock comes first
    })  # fmt: skip
    uv(repo, "lock", "--no-index", "--find-links", str(wheels))
    commit(repo, {})
    first = run(worker, repo, "examples/run.py", wheels, find_links=[])
    assert "code one dep 1.0" in first["log_tail"]
    digest = hashlib.sha256((repo / "uv.lock").read_bytes()).hexdigest()[:12]
    record = store.get(first["run_id"])
    assert record["env_source"] == f"uv.lock (sha256 {digest})"
    assert record["env_hit"] == "0" and record["freeze"] == ["cademo==1.0"]
    # the code and the declared range move, the lock does not: the same env, this run's code
    commit(
        repo, {"src/mypkg/__init__.py": "CODE = 'two'\n", "pyproject.toml": pyproject('"cademo"')}
    )
    second = run(worker, repo, "examples/run.py", wheels, find_links=[])
    assert "code two dep 1.0" in second["log_tail"], "the locked version; the project's code is new"
    assert store.get(second["run_id"])["env_hit"] == "1"
    uv(repo, "lock", "--no-index", "--find-links", str(wheels), "--upgrade")  # now cademo 2.0
    commit(repo, {})
    third = run(worker, repo, "examples/run.py", wheels, find_links=[])
    assert "code two dep 2.0" in third["log_tail"]
    assert store.get(third["run_id"])["env_key"] != record["env_key"]


def test_a_pylock_toml_made_by_uv_export_is_installed_without_the_project(
    worker, make_repo, wheels, store
):
    repo = make_repo({
        "pyproject.toml": pyproject('"cademo<2"'),
        "src/mypkg/__init__.py": "CODE = 'pylock'\n",
        "examples/run.py": RUN_PKG,
    })  # fmt: skip
    uv(repo, "lock", "--no-index", "--find-links", str(wheels))
    uv(repo, "export", "--frozen", "--format", "pylock.toml", "-o", "pylock.toml")
    (repo / "uv.lock").unlink()
    commit(repo, {})
    out = run(worker, repo, "examples/run.py", wheels, find_links=[])
    assert "code pylock dep 1.0" in out["log_tail"]
    record = store.get(out["run_id"])
    assert record["env_source"].startswith("pylock.toml (sha256 ")
    assert record["freeze"] == ["cademo==1.0"], "the project itself is not installed"


def test_a_poetry_lock_installs_the_locked_versions_of_its_groups(worker, make_repo, wheels, store):
    def entry(name: str, version: str, group: str) -> str:
        wheel = wheels / f"{name}-{version}-py3-none-any.whl"
        sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
        return (
            f'[[package]]\nname = "{name}"\nversion = "{version}"\noptional = false\n'
            f'python-versions = "*"\ngroups = ["{group}"]\n'
            f'files = [{{file = "{wheel.name}", hash = "sha256:{sha}"}}]\n\n'
        )

    repo = make_repo({
        "pyproject.toml": '[tool.poetry]\nname = "mypkg"\nversion = "0.1"\n\n'
        '[tool.poetry.dependencies]\npython = "^3.9"\ncademo = "^1.0"\n\n'
        '[tool.poetry.group.docs]\noptional = true\n\n'
        '[tool.poetry.group.docs.dependencies]\ncaextra = "*"\n',
        "poetry.lock": entry("cademo", "1.0", "main") + entry("caextra", "0.1", "docs")
        + '[metadata]\nlock-version = "2.1"\npython-versions = "^3.9"\ncontent-hash = "0"\n',
        "mypkg/__init__.py": "CODE = 'poetry'\n",
        "scripts/run.py": RUN_PKG,
    })  # fmt: skip
    out = run(worker, repo, "scripts/run.py", wheels)
    assert "code poetry dep 1.0" in out["log_tail"]
    record = store.get(out["run_id"])
    assert record["env_source"].startswith("poetry.lock (sha256 ")
    assert record["freeze"] == ["cademo==1.0"], "the optional docs group is left out"


def test_pyproject_without_a_lock_installs_its_dependencies_and_nothing_says_none(
    worker, make_repo, wheels, store
):
    repo = make_repo({
        "pyproject.toml": pyproject('"cademo<2"') + "\n[tool.ruff]\nline-length = 100\n",
        "mypkg/__init__.py": "CODE = 'flat'\n",
        "tools/run.py": RUN_PKG,
    })  # fmt: skip
    out = run(worker, repo, "tools/run.py", wheels)
    assert "code flat dep 1.0" in out["log_tail"]
    assert store.get(out["run_id"])["env_source"].startswith("pyproject.toml (sha256 ")
    bare = make_repo({"pyproject.toml": "[tool.ruff]\n", "go.py": "print('bare')\n"}, "bare")
    out = run(worker, bare, "go.py", wheels)
    _, lines = store.read_log(out["run_id"])
    assert any("env: requirements from none (no requirements" in line for line in lines)


def test_a_uv_lock_installs_the_chosen_extra_and_group(worker, make_repo, wheels, store):
    write_wheel(wheels, "cathird", "0.2", "NAME = 'third'\n")
    repo = make_repo({
        "pyproject.toml": pyproject('"cademo<2"')
        + '[project.optional-dependencies]\nx = ["caextra"]\n[dependency-groups]\ng = ["cathird"]\n',
        "src/mypkg/__init__.py": "CODE = 'chosen'\n",
        "run.py": "import mypkg, caextra, cathird\nprint('code', mypkg.CODE, caextra.NAME, cathird.NAME)\n",
    })  # fmt: skip
    uv(repo, "lock", "--no-index", "--find-links", str(wheels))
    commit(repo, {})
    out = run(worker, repo, "run.py", wheels, find_links=[], extras=["x"], groups=["g"])
    assert "code chosen extra third" in out["log_tail"]
    assert store.get(out["run_id"])["freeze"] == ["cademo==1.0", "caextra==0.1", "cathird==0.2"]


def test_an_editable_project_in_a_requirements_file_is_this_runs_code_with_its_deps_installed(
    worker, make_repo, wheels, store
):
    repo = make_repo({
        "pyproject.toml": pyproject('"cademo<2"'),
        "src/mypkg/__init__.py": "CODE = 'first'\n",
        "envs/dev.txt": "-e ..\ncaextra\n",
        "examples/run.py": "import mypkg, cademo, caextra\nprint('code', mypkg.CODE, cademo.VERSION)\n",
    })  # fmt: skip
    first = run(worker, repo, "examples/run.py", wheels, requirements_file="envs/dev.txt")
    assert "code first 1.0" in first["log_tail"]
    record = store.get(first["run_id"])
    assert record["freeze"] == ["cademo==1.0", "caextra==0.1"], "mypkg is not installed"
    commit(repo, {"src/mypkg/__init__.py": "CODE = 'second'\n"})
    second = run(worker, repo, "examples/run.py", wheels, requirements_file="envs/dev.txt")
    assert "code second 1.0" in second["log_tail"]
    assert store.get(second["run_id"])["env_hit"] == "1"
