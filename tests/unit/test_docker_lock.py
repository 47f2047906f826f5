"""A lock file made into the pinned requirements a docker run's container installs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from celery_agent.executors import docker_lock
from celery_agent.executors.envsource import EnvSource
from celery_agent.executors.venv import uv_binary
from celery_agent.testing import write_wheel

PYPROJECT = '[project]\nname = "mypkg"\nversion = "0.1"\nrequires-python = ">=3.9"\n'


def _source(kind: str, lock: Path) -> EnvSource:
    return EnvSource(kind, kind, "0" * 64, file=lock)


def test_a_uv_lock_pins_its_locked_version_and_names_its_wheel_folder(tmp_path: Path) -> None:
    wheels, repo = tmp_path / "wheels", tmp_path / "repo"
    write_wheel(wheels, "cademo", "1.0", "VERSION = '1.0'\n")
    write_wheel(wheels, "cademo", "2.0", "VERSION = '2.0'\n")
    repo.mkdir()
    (repo / "pyproject.toml").write_text(PYPROJECT + 'dependencies = ["cademo<2"]\n')
    uv = uv_binary()
    assert uv is not None
    env = dict(os.environ, UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never")
    subprocess.run([uv, "lock", "--no-index", "--find-links", str(wheels)], cwd=repo, env=env,
                   check=True, capture_output=True)  # fmt: skip
    source = _source("uv.lock", repo / "uv.lock")
    pins = docker_lock.pinned(source, repo, tmp_path / "scratch", print)
    lines = [line for line in pins.read_text().splitlines() if not line.lstrip().startswith("#")]
    assert lines == ["cademo==1.0"], "the locked version; the project itself is left out"
    assert docker_lock.local_folders(source) == [str(wheels)]


def test_a_pylock_pins_versions_with_markers_and_hashes_and_drops_the_project(
    tmp_path: Path,
) -> None:
    lock = tmp_path / "pylock.toml"
    lock.write_text(
        'lock-version = "1.0"\ncreated-by = "t"\n'
        '[[packages]]\nname = "cademo"\nversion = "1.0"\nmarker = "python_version >= \'3.9\'"\n'
        'wheels = [{ path = "wheels/cademo-1.0-py3-none-any.whl", hashes = { sha256 = "ab" } }]\n'
        '[[packages]]\nname = "mypkg"\ndirectory = { path = ".", editable = true }\n'
    )
    (tmp_path / "wheels").mkdir()
    source = _source("pylock.toml", lock)
    pins = docker_lock.pinned(source, tmp_path, tmp_path / "scratch", print)
    assert pins.read_text() == "cademo==1.0 ; python_version >= '3.9' --hash=sha256:ab\n"
    assert docker_lock.local_folders(source) == [str(tmp_path / "wheels")]
