"""The venv executor with real installs (uv and pip) from a local wheelhouse, no index."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from celery_agent.errors import EnvBuildError, StageTimeout
from celery_agent.executors import ExecutorSettings, get_executor
from celery_agent.executors.base import Executor, PreparedEnv
from celery_agent.spec import TaskSpec

pytestmark = pytest.mark.integration


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def make_wheel(folder: Path, name: str, version: str, source: str) -> Path:
    """Write a pure-python wheel holding one module named like the distribution."""
    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": source.encode(),
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name_in_zip, data in files.items():
            archive.writestr(name_in_zip, data)
    return path


@pytest.fixture(scope="session")
def demo_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("demo_wheels")
    make_wheel(folder, "caw-demo", "1.2.0", "VALUE = 42\n")
    make_wheel(folder, "caw-extra", "0.3.1", "NAME = 'extra'\n")
    return folder


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "train.py").write_text("print('hi')\n")
    return folder


def executor(tmp_path: Path, installer: str) -> Executor:
    return get_executor("venv", ExecutorSettings(cache_root=tmp_path / "envs", installer=installer))


def spec(demo_wheels: Path, **fields: object) -> TaskSpec:
    base = {"repo": ".", "entry": "train.py", "find_links": [str(demo_wheels)], "no_index": True}
    return TaskSpec.parse(base | fields)


def run_python(prepared: PreparedEnv, code: str) -> str:
    argv = [prepared.python, "-c", code]
    return subprocess.run(argv, capture_output=True, text=True, check=True, env={}).stdout.strip()


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_installs_from_a_local_wheelhouse_and_the_env_imports_it(
    tmp_path: Path, demo_wheels: Path, source: Path, installer: str
) -> None:
    lines: list[str] = []
    ex = executor(tmp_path, installer)
    prepared = ex.prepare(spec(demo_wheels, requirements=["CAW_Demo==1.2.0"]), source, lines.append)
    assert run_python(prepared, "import caw_demo; print(caw_demo.VALUE)") == "42"
    assert (prepared.cache_hit, prepared.installer) == (False, installer)
    assert "caw-demo==1.2.0" in prepared.freeze and prepared.freeze == sorted(prepared.freeze)
    env_dir = Path(prepared.env["VIRTUAL_ENV"])
    assert prepared.python == str(env_dir / "bin" / "python")
    assert prepared.path_prefix == [str(env_dir / "bin")]
    assert any(line.startswith("$ ") and " install " in line for line in lines)


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_second_prepare_is_a_fast_cache_hit_at_the_same_path(
    tmp_path: Path, demo_wheels: Path, source: Path, installer: str
) -> None:
    ex = executor(tmp_path, installer)
    s = spec(demo_wheels, requirements=["caw-demo"])
    first = ex.prepare(s, source, lambda _: None)
    lines: list[str] = []
    second = ex.prepare(s, source, lines.append)
    assert second.cache_hit and second.cache_key == first.cache_key
    assert second.python == first.python and second.freeze == first.freeze
    assert second.seconds < 0.5
    assert not any(line.startswith("$ ") for line in lines)


def test_uv_env_has_compiled_bytecode(tmp_path: Path, demo_wheels: Path, source: Path) -> None:
    prepared = executor(tmp_path, "uv").prepare(
        spec(demo_wheels, requirements=["caw-demo"]), source, print
    )
    site = run_python(prepared, "import caw_demo, os; print(os.path.dirname(caw_demo.__file__))")
    assert list(Path(site, "__pycache__").glob("__init__.*.pyc"))


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_unknown_package_fails_with_installer_output_then_fails_from_cache(
    tmp_path: Path, demo_wheels: Path, source: Path, installer: str
) -> None:
    ex = executor(tmp_path, installer)
    s = spec(demo_wheels, requirements=["caw-no-such-package"])
    lines: list[str] = []
    with pytest.raises(EnvBuildError) as first:
        ex.prepare(s, source, lines.append)
    assert f"{installer} install failed (exit" in first.value.message
    assert "caw-no-such-package" in first.value.message
    assert "check the requirement names" in (first.value.hint or "")
    again: list[str] = []
    with pytest.raises(EnvBuildError) as second:
        ex.prepare(s, source, again.append)
    assert second.value.message.startswith("cached failure from")
    assert "caw-no-such-package" in second.value.message
    assert not any(line.startswith("$ ") for line in again)


def test_requirements_txt_in_the_source_is_used_when_the_spec_has_none(
    tmp_path: Path, demo_wheels: Path, source: Path
) -> None:
    (source / "requirements.txt").write_text("# deps\ncaw-extra==0.3.1\n")
    prepared = executor(tmp_path, "uv").prepare(spec(demo_wheels), source, print)
    assert run_python(prepared, "import caw_extra; print(caw_extra.NAME)") == "extra"
    assert prepared.freeze == ["caw-extra==0.3.1"]


def test_requirements_txt_with_options_is_installed_as_a_file(
    tmp_path: Path, demo_wheels: Path, source: Path
) -> None:
    (source / "requirements.txt").write_text(f"--find-links {demo_wheels}\ncaw-demo\n")
    prepared = executor(tmp_path, "uv").prepare(spec(demo_wheels), source, print)
    assert "caw-demo==1.2.0" in prepared.freeze


def test_no_requirements_builds_a_bare_env(tmp_path: Path, demo_wheels: Path, source: Path) -> None:
    prepared = executor(tmp_path, "uv").prepare(spec(demo_wheels, requirements=[]), source, print)
    assert prepared.freeze == []
    assert run_python(prepared, "import sys; print(sys.prefix != sys.base_prefix)") == "True"


def test_python_version_in_the_spec_picks_that_interpreter(
    tmp_path: Path, demo_wheels: Path, source: Path
) -> None:
    wanted = f"{sys.version_info.major}.{sys.version_info.minor}"
    s = spec(demo_wheels, requirements=[], python=wanted)
    prepared = executor(tmp_path, "uv").prepare(s, source, print)
    assert run_python(prepared, "import sys; print(sys.version)").startswith(wanted + ".")


def test_build_timeout_stops_the_build_and_leaves_no_entry(
    tmp_path: Path, demo_wheels: Path, source: Path
) -> None:
    settings = ExecutorSettings(cache_root=tmp_path / "envs", installer="pip", build_timeout=0.2)
    ex = get_executor("venv", settings)
    with pytest.raises(StageTimeout, match="env stage timed out after 0.2s"):
        ex.prepare(spec(demo_wheels, requirements=["caw-demo"]), source, print)
    assert ex.env_cache().entries() == []
    again = get_executor("venv", ExecutorSettings(cache_root=tmp_path / "envs", installer="pip"))
    assert not again.prepare(spec(demo_wheels, requirements=["caw-demo"]), source, print).cache_hit


def test_prepare_rebuilds_an_env_whose_cache_entry_was_removed(
    tmp_path: Path, demo_wheels: Path, source: Path
) -> None:
    ex = executor(tmp_path, "uv")
    s = spec(demo_wheels, requirements=["caw-demo"])
    first = ex.prepare(s, source, print)
    assert ex.prepare(s, source, print).cache_hit
    assert first.cache_key is not None
    ex.env_cache().remove(first.cache_key)
    again = ex.prepare(s, source, print)
    assert not again.cache_hit and again.cache_key == first.cache_key
    assert run_python(again, "import caw_demo; print(caw_demo.VALUE)") == "42"


def test_prepare_follows_an_edited_requirements_txt(
    tmp_path: Path, demo_wheels: Path, source: Path
) -> None:
    ex = executor(tmp_path, "uv")
    requirements = source / "requirements.txt"
    requirements.write_text("caw-demo\n")
    first = ex.prepare(spec(demo_wheels), source, print)
    assert ex.prepare(spec(demo_wheels), source, print).cache_hit
    requirements.write_text("caw-extra\n")
    second = ex.prepare(spec(demo_wheels), source, print)
    assert (second.cache_hit, second.freeze) == (False, ["caw-extra==0.3.1"])
    assert second.cache_key != first.cache_key


def test_two_envs_with_the_same_package_share_its_files_through_uvs_cache(
    tmp_path: Path, demo_wheels: Path, source: Path
) -> None:
    ex = executor(tmp_path, "uv")
    one = ex.prepare(spec(demo_wheels, requirements=["caw-demo"]), source, print)
    two = ex.prepare(spec(demo_wheels, requirements=["caw-demo", "caw-extra"]), source, print)
    assert one.cache_key != two.cache_key

    def module(prepared: PreparedEnv) -> Path:
        env = Path(prepared.env["VIRTUAL_ENV"])
        return next(env.glob("lib/python*/site-packages/caw_demo/__init__.py"))

    a, b = module(one).stat(), module(two).stat()
    assert (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino), "one file, linked into both envs"
    rows = {row["key"]: row for row in ex.env_cache().entries()}
    assert rows[two.cache_key]["shared_bytes"] > 0
