"""Executors without installs: registry, cache keys, requirements, interpreters, local, timeouts."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from celery_agent import executors
from celery_agent.envcache import EnvCache
from celery_agent.errors import EnvBuildError, ExecutorUnavailable, StageTimeout
from celery_agent.executors import ExecutorSettings, available, get_executor
from celery_agent.executors.base import Executor, PreparedEnv
from celery_agent.executors.indexes import plain
from celery_agent.executors.interpreters import Interpreter, find_interpreter
from celery_agent.executors.local import LocalExecutor
from celery_agent.executors.steps import Steps, clean_env
from celery_agent.executors.venv import (
    VenvExecutor,
    key_parts,
    normalize,
    read_requirements,
)
from celery_agent.spec import TaskSpec

PY = Interpreter(path="/opt/python3.11/bin/python3.11", version="3.11.7 (main) [GCC 12.2.0]")


def spec(**fields: object) -> TaskSpec:
    return TaskSpec.parse({"repo": ".", "entry": "train.py"} | fields)


def key(source: Path, python: Interpreter = PY, **fields: object) -> str:
    s = spec(**fields)
    return EnvCache.key(key_parts(python, "uv", read_requirements(s, source), plain(s), source))


@pytest.fixture
def settings(tmp_path: Path) -> ExecutorSettings:
    return ExecutorSettings(cache_root=tmp_path / "envs")


# -- registry -------------------------------------------------------------------------------------
def test_unknown_executor_name_is_unavailable_with_the_known_names(
    settings: ExecutorSettings,
) -> None:
    with pytest.raises(ExecutorUnavailable) as caught:
        get_executor("kubernetes", settings)
    assert "'kubernetes' is unknown" in caught.value.message
    assert "venv" in (caught.value.hint or "") and "local" in (caught.value.hint or "")


def test_executor_whose_module_is_absent_is_not_available_in_this_version(
    settings: ExecutorSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        executors.EXECUTORS, "docker", "celery_agent.executors.absent:DockerExecutor"
    )
    with pytest.raises(ExecutorUnavailable) as caught:
        get_executor("docker", settings)
    assert "not available in this version" in caught.value.message


def test_executor_missing_a_dependency_names_the_extra_to_install(
    settings: ExecutorSettings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "fake_docker_executor.py").write_text("import no_such_engine_sdk\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(executors.EXECUTORS, "docker", "fake_docker_executor:DockerExecutor")
    with pytest.raises(ExecutorUnavailable) as caught:
        get_executor("docker", settings)
    assert "no_such_engine_sdk" in caught.value.message
    assert caught.value.hint == "pip install 'celery-agent[docker]'"


@pytest.mark.parametrize("name", ["docker", "conda"])
def test_docker_and_conda_always_load_their_dependency_is_asked_for_when_used(
    settings: ExecutorSettings, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # their modules import the optional package lazily: loading never needs it
    executor = get_executor(name, settings)
    assert isinstance(executor, Executor) and executor.name == name
    # without the package, unavailable_reason() names the extra to install
    package = {"docker": "docker", "conda": "rattler"}[name]
    monkeypatch.setitem(sys.modules, package, None)  # (None in sys.modules: ImportError)
    reason = executor.unavailable_reason()
    assert reason is not None and f"celery-agent[{name}]" in reason


def test_venv_and_local_are_available_here(settings: ExecutorSettings) -> None:
    reasons = available(settings)
    assert reasons["venv"] is None and reasons["local"] is None
    assert set(reasons) == set(executors.EXECUTORS)
    assert isinstance(get_executor("venv", settings), VenvExecutor)


def test_default_command_is_the_prepared_interpreter_then_argv(settings: ExecutorSettings) -> None:
    prepared = PreparedEnv(python="/envs/x/bin/python")
    command = LocalExecutor(settings).command(prepared, ["train.py", "--lr", "0.1"])
    assert command == ["/envs/x/bin/python", "train.py", "--lr", "0.1"]


# -- cache keys -----------------------------------------------------------------------------------
def test_requirement_order_and_name_spelling_do_not_change_the_key(tmp_path: Path) -> None:
    a = key(tmp_path, requirements=["PyYAML>=6", "six"])
    b = key(tmp_path, requirements=["six", "pyyaml>=6", "six"])
    assert a == b
    assert normalize(["Py_YAML[B,a]>=6"]) == ("py-yaml[a,b]>=6",)


def test_python_version_or_path_changes_the_key(tmp_path: Path) -> None:
    other_version = Interpreter(path=PY.path, version="3.11.8 (main)")
    other_path = Interpreter(path="/usr/bin/python3.11", version=PY.version)
    keys = {key(tmp_path), key(tmp_path, other_version), key(tmp_path, other_path)}
    assert len(keys) == 3


def test_requirements_and_index_change_the_key(tmp_path: Path) -> None:
    keys = {
        key(tmp_path, requirements=["six"]),
        key(tmp_path, requirements=["six==1.16.0"]),
        key(tmp_path, requirements=["six"], index_url="https://mirror.example/simple"),
    }
    assert len(keys) == 3


def test_a_new_wheel_in_a_find_links_folder_changes_the_key(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    before = key(tmp_path, requirements=["six"], find_links=[str(wheels)])
    (wheels / "six-9.9-py3-none-any.whl").write_bytes(b"zip")
    assert key(tmp_path, requirements=["six"], find_links=[str(wheels)]) != before


# -- requirements ---------------------------------------------------------------------------------
def test_spec_requirements_win_over_requirements_txt(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("numpy\n")
    empty = read_requirements(spec(requirements=[]), tmp_path)
    assert not empty and empty.kind == "requirements" and empty.lines == ()
    assert read_requirements(spec(requirements=["Six"]), tmp_path).lines == ("six",)


def test_requirements_txt_is_read_without_comments_when_spec_gives_none(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("# pinned\n\nSix==1.16.0  # why\nattrs\n")
    reqs = read_requirements(spec(), tmp_path)
    assert reqs.lines == ("attrs", "six==1.16.0") and reqs.file is None


def test_requirements_txt_with_options_is_passed_through_as_a_file(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("-e .\nsix\n")
    reqs = read_requirements(spec(), tmp_path)
    assert reqs.file == (tmp_path / "requirements.txt").resolve()
    assert reqs.sha256 and reqs.lines == ()
    before = key(tmp_path)
    (tmp_path / "requirements.txt").write_text("-e .\nsix==1.16.0\n")
    assert key(tmp_path) != before


def test_no_requirements_anywhere_means_an_empty_env(tmp_path: Path) -> None:
    assert not read_requirements(spec(), tmp_path)


# -- interpreters ---------------------------------------------------------------------------------
def test_default_interpreter_is_the_workers_base_python_not_its_venv() -> None:
    found = find_interpreter(None)
    assert found.short_version == ".".join(map(str, sys.version_info[:3]))
    assert not (Path(found.path).parent.parent / "pyvenv.cfg").exists()


def test_version_is_found_on_path() -> None:
    wanted = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert find_interpreter(wanted).short_version.startswith(wanted + ".")


def test_missing_version_raises_naming_the_version() -> None:
    with pytest.raises(EnvBuildError) as caught:
        find_interpreter("2.1")
    assert "python 2.1 is not installed" in caught.value.message and caught.value.hint


def test_missing_interpreter_path_raises(tmp_path: Path) -> None:
    with pytest.raises(EnvBuildError, match="does not run"):
        find_interpreter(str(tmp_path / "python9"))


# -- local executor -------------------------------------------------------------------------------
def test_local_runs_the_workers_interpreter_and_installs_nothing(
    settings: ExecutorSettings, tmp_path: Path
) -> None:
    lines: list[str] = []
    prepared = LocalExecutor(settings).prepare(spec(), tmp_path, lines.append)
    assert prepared.python == sys.executable, "the worker's own interpreter, venv included"
    assert prepared.env.get("VIRTUAL_ENV") == sys.prefix
    assert (prepared.freeze, prepared.installer, prepared.cache_key) == ([], "none", None)
    assert any("local interpreter" in line for line in lines)


def test_local_refuses_requirements_and_points_to_venv(
    settings: ExecutorSettings, tmp_path: Path
) -> None:
    with pytest.raises(EnvBuildError) as caught:
        LocalExecutor(settings).prepare(spec(requirements=["six"]), tmp_path, lambda _: None)
    assert "six" in caught.value.message and "venv" in (caught.value.hint or "")


def test_local_keeps_a_venv_python_path_and_activates_its_venv(
    settings: ExecutorSettings, tmp_path: Path
) -> None:
    venv_python = Path(sys.prefix) / "bin" / "python"
    prepared = LocalExecutor(settings).prepare(spec(python=str(venv_python)), tmp_path, print)
    assert prepared.python == str(venv_python)
    assert prepared.env == {"VIRTUAL_ENV": sys.prefix}
    assert prepared.path_prefix == [str(venv_python.parent)]


# -- venv executor, without installing ------------------------------------------------------------
def test_venv_executor_prefers_uv_when_auto(settings: ExecutorSettings) -> None:
    executor = VenvExecutor(settings)
    assert executor.unavailable_reason() is None
    assert executor.installer() == "uv"
    assert executor.env_cache().root == settings.cache_root / "venv"


def _steps(tmp_path: Path, timeout: float | None, lines: list[str]) -> Steps:
    return Steps(clean_env(), lines.append, timeout=timeout, cwd=tmp_path)


def test_installer_failure_message_carries_the_last_output_lines(tmp_path: Path) -> None:
    lines: list[str] = []
    code = "import sys\nfor i in range(100): print('line', i)\nsys.exit(3)"
    with pytest.raises(EnvBuildError) as caught:
        _steps(tmp_path, None, lines).run([sys.executable, "-c", code], "pip install", "fix it")
    assert caught.value.message.startswith("pip install failed (exit 3):\nline 70\n")
    assert caught.value.message.endswith("line 99") and caught.value.hint == "fix it"
    assert "line 0" in lines and lines[0].startswith("$ ")


def test_build_over_its_timeout_is_killed_and_raises_stage_timeout(tmp_path: Path) -> None:
    code = "import time; print('working', flush=True); time.sleep(30)"
    start = time.monotonic()
    with pytest.raises(StageTimeout) as caught:
        _steps(tmp_path, 0.5, []).run([sys.executable, "-c", code], "pip install", "")
    assert time.monotonic() - start < 10
    assert "env stage timed out after 0.5s" in caught.value.message


def test_a_stop_ends_a_build_step_within_a_second_and_kills_its_group(tmp_path: Path) -> None:
    import psutil

    from celery_agent.errors import Cancelled

    lines: list[str] = []
    asked = time.monotonic() + 0.3
    code = "import os, time; print(os.getpid(), flush=True); time.sleep(30)"
    steps = Steps(clean_env(), lines.append, timeout=60, cwd=tmp_path,
                  stop=lambda: time.monotonic() >= asked)  # fmt: skip
    with pytest.raises(Cancelled, match=r"cancelled while preparing \(during pip install\)"):
        steps.run([sys.executable, "-c", code], "pip install", "")
    assert time.monotonic() - asked < 1.0
    pid = int(next(line for line in lines if line.isdigit()))
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_installer_gets_an_explicit_env_without_virtualenv_or_pythonpath(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIRTUAL_ENV", "/somewhere/else")
    monkeypatch.setenv("PYTHONPATH", "/injected")
    steps = _steps(tmp_path, None, [])
    code = "import os; print(sorted(k for k in os.environ if k in ('VIRTUAL_ENV', 'PYTHONPATH')))"
    assert steps.run([sys.executable, "-c", code], "probe", "")[-1] == "[]"
    assert "PATH" in steps.env and "HOME" in steps.env
    assert os.environ["PYTHONPATH"] == "/injected"


def test_a_stage_limit_tightens_the_build_timeout_only_when_it_is_shorter(tmp_path):
    base = ExecutorSettings(cache_root=tmp_path, build_timeout=60.0)
    assert base.within(None) is base and base.within(120.0) is base
    assert base.within(5.0).build_timeout == 5.0 and base.within(5.0).cache_root == tmp_path
    assert ExecutorSettings(cache_root=tmp_path).within(30.0).build_timeout == 30.0
    assert base.build_timeout == 60.0, "the worker's own settings are left as they are"
