"""Where an environment comes from: the order of sources, includes, projects and lock files."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from celery_agent.errors import ExecutorUnavailable, SpecError
from celery_agent.executors import ExecutorSettings, get_executor, lockfiles, pyprojects
from celery_agent.executors.envsource import entry_folder, resolve
from celery_agent.spec import TaskSpec

PROJECT = '[project]\nname = "mypkg"\nversion = "0.1"\ndependencies = ["Six>=1", "attrs"]\n'


def spec(entry: str = "train.py", **fields: object) -> TaskSpec:
    return TaskSpec.parse({"repo": ".", "entry": entry} | fields)


def files(root: Path, layout: dict[str, str]) -> Path:
    for rel, text in layout.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_requirements_txt_nearest_the_entry_wins_over_the_roots(tmp_path: Path) -> None:
    files(tmp_path, {"requirements.txt": "numpy\n", "ex/a/requirements.txt": "six\n"})
    (tmp_path / "ex/b").mkdir()
    assert resolve(spec("ex/a/run.py"), tmp_path).rel == "ex/a/requirements.txt"
    found = resolve(spec("ex/b/run.py"), tmp_path)
    assert (found.kind, found.rel, found.lines) == (
        "requirements.txt",
        "requirements.txt",
        ("numpy",),
    )


def test_a_script_is_a_path_from_the_root_and_a_module_is_found_under_the_workdir(
    tmp_path: Path,
) -> None:
    files(tmp_path, {"requirements.txt": "numpy\n", "ex/a/requirements.txt": "six\n"})
    assert resolve(spec("ex/a/run.py", workdir="ex"), tmp_path).rel == "ex/a/requirements.txt"
    assert resolve(spec("run.py", workdir="ex/a"), tmp_path).rel == "requirements.txt"
    assert entry_folder(spec("-m pkg.sub.mod", workdir="ex"), tmp_path) == str(tmp_path / "ex")
    (tmp_path / "ex/pkg/sub").mkdir(parents=True)
    assert entry_folder(spec("-m pkg.sub.mod", workdir="ex"), tmp_path) == str(
        tmp_path / "ex/pkg/sub"
    )


def test_includes_resolve_from_the_including_file_and_change_the_hash(tmp_path: Path) -> None:
    files(
        tmp_path, {"ex/common.txt": "six\n", "ex/a/requirements.txt": "-r ../common.txt\nattrs\n"}
    )
    first = resolve(spec("ex/a/run.py"), tmp_path)
    assert first.file == (tmp_path / "ex/a/requirements.txt").resolve() and first.lines == ()
    (tmp_path / "ex/common.txt").write_text("six==1.16.0\n")
    assert resolve(spec("ex/a/run.py"), tmp_path).sha256 != first.sha256


def test_a_missing_include_names_the_file_the_line_and_the_path(tmp_path: Path) -> None:
    files(tmp_path, {"requirements.txt": "six\n-c constraints/cpu.txt\n"})
    with pytest.raises(SpecError, match=r"requirements.txt line 2 includes constraints/cpu.txt"):
        resolve(spec(), tmp_path)


def test_the_specs_list_or_file_come_first(tmp_path: Path) -> None:
    files(
        tmp_path, {"uv.lock": "version = 1\n", "envs/gpu.txt": "Torch\n", "pyproject.toml": PROJECT}
    )
    assert resolve(spec(requirements=["Six"]), tmp_path).lines == ("six",)
    named = resolve(spec(requirements_file="envs/gpu.txt"), tmp_path)
    assert (named.kind, named.rel, named.lines) == ("requirements_file", "envs/gpu.txt", ("torch",))
    assert named.project is not None and named.project.name == "mypkg"
    with pytest.raises(SpecError, match="not there"):
        resolve(spec(requirements_file="envs/none.txt"), tmp_path)


def test_both_a_list_and_a_file_in_one_spec_is_an_error() -> None:
    with pytest.raises(SpecError, match="requirements or requirements_file, not both"):
        spec(requirements=["six"], requirements_file="r.txt")
    with pytest.raises(SpecError, match="outside the repository"):
        spec(requirements_file="../r.txt")


def test_a_lock_comes_before_pyproject_and_requirements_txt(tmp_path: Path) -> None:
    files(
        tmp_path,
        {"pyproject.toml": PROJECT, "requirements.txt": "x\n", "ex/requirements.txt": "y\n"},
    )
    assert resolve(spec("ex/run.py"), tmp_path).kind == "pyproject.toml"
    for name in ("poetry.lock", "pylock.toml", "uv.lock"):  # each preferred over the last
        (tmp_path / name).write_text("# lock\n")
        found = resolve(spec("ex/run.py"), tmp_path)
        assert (found.kind, found.rel, found.locked) == (name, name, True)
    assert resolve(spec("ex/run.py"), tmp_path, locks=False).kind == "pyproject.toml"


def test_pyproject_dependencies_are_the_requirements_and_tool_settings_are_no_project(
    tmp_path: Path,
) -> None:
    files(
        tmp_path, {"pyproject.toml": "[tool.ruff]\nline-length = 99\n", "requirements.txt": "x\n"}
    )
    assert resolve(spec(), tmp_path).kind == "requirements.txt"
    (tmp_path / "pyproject.toml").write_text(PROJECT)
    found = resolve(spec(), tmp_path)
    assert found.kind == "pyproject.toml" and found.lines == ("attrs", "six>=1")


def test_the_project_import_root_is_src_in_a_src_layout(tmp_path: Path) -> None:
    files(tmp_path, {"pyproject.toml": PROJECT, "examples/run.py": ""})
    assert resolve(spec("examples/run.py"), tmp_path).pythonpath() == str(tmp_path)
    (tmp_path / "src/mypkg").mkdir(parents=True)
    assert resolve(spec("examples/run.py"), tmp_path).pythonpath() == str(tmp_path / "src")


def test_nothing_found_is_an_empty_source_that_says_so(tmp_path: Path) -> None:
    found = resolve(spec(), tmp_path)
    assert not found and found.kind == "none" and "none" in found.describe()


def test_poetry_constraints_become_requirements(tmp_path: Path) -> None:
    files(tmp_path, {"pyproject.toml": '[tool.poetry]\nname = "p"\n[tool.poetry.dependencies]\n'
                     'python = "^3.9"\nsix = "^1.16"\nattrs = "~0.3.1"\nidna = "^0.0.4"\nrich = "*"\n'
                     'click = {version = "8.1.7"}\n'})  # fmt: skip
    project = pyprojects.read(tmp_path)
    assert project is not None and project.dependencies == (
        "six>=1.16,<2", "attrs>=0.3.1,<0.4", "idna>=0.0.4,<0.0.5", "rich", "click==8.1.7",
    )  # fmt: skip


def test_a_pylock_copy_drops_the_projects_folder_entry(tmp_path: Path) -> None:
    lock = files(tmp_path, {"pylock.toml": (
        'lock-version = "1.0"\n\n[[packages]]\nname = "six"\nversion = "1.17.0"\n\n'
        '[[packages.wheels]]\nurl = "file:///w/six.whl"\n\n'
        '[[packages]]\nname = "mypkg"\ndirectory = { path = ".", editable = true }\n\n'
        '[tool.x]\nkeep = 1\n'
    )}) / "pylock.toml"  # fmt: skip
    out = lockfiles.pylock_file(lock, tmp_path, tmp_path / "scratch")
    data = tomllib.loads(out.read_text())
    assert [p["name"] for p in data["packages"]] == ["six"] and data["tool"] == {"x": {"keep": 1}}
    assert data["packages"][0]["wheels"] == [{"url": "file:///w/six.whl"}]


def test_a_poetry_lock_becomes_pins_with_hashes_and_markers(tmp_path: Path) -> None:
    files(tmp_path, {
        "pyproject.toml": '[tool.poetry]\nname = "p"\n[tool.poetry.group.dev]\noptional = true\n',
        "poetry.lock": (
            '[[package]]\nname = "six"\nversion = "1.17.0"\noptional = false\ngroups = ["main"]\n'
            'markers = "python_version >= \\"3.8\\""\nfiles = [{file = "six.whl", hash = "sha256:ab"}]\n\n'
            '[[package]]\nname = "pytest"\nversion = "8.0"\noptional = false\ngroups = ["dev"]\n'
            'files = [{file = "pytest.whl", hash = "sha256:cd"}]\n\n'
            '[[package]]\nname = "lib"\nversion = "0.1"\noptional = false\ngroups = ["main"]\n'
            'files = []\n[package.source]\ntype = "directory"\nurl = "libs/lib"\n'
        ),
    })  # fmt: skip
    out, folders = lockfiles.poetry_requirements(tmp_path / "poetry.lock", tmp_path / "s")
    assert out.read_text() == 'six==1.17.0 ; python_version >= "3.8" --hash=sha256:ab\n'
    assert folders == ["lib"]


def test_extras_and_groups_add_to_a_pyprojects_requirements_and_its_key(tmp_path: Path) -> None:
    files(tmp_path, {"pyproject.toml": PROJECT + (
        '[project.optional-dependencies]\nGPU = ["cupy"]\n'
        '[dependency-groups]\ntest = ["pytest", {include-group = "lint"}]\nlint = ["ruff"]\n'
    )})  # fmt: skip
    found = resolve(spec(extras=["gpu"], groups=["test"]), tmp_path)
    assert found.lines == ("attrs", "cupy", "pytest", "ruff", "six>=1")
    assert found.sha256 != resolve(spec(), tmp_path).sha256
    with pytest.raises(SpecError, match=r"extra 'cuda' is not declared .* \(known: GPU\)"):
        resolve(spec(extras=["cuda"]), tmp_path)


def test_extras_and_groups_of_a_lock_go_to_the_installer_and_the_key(tmp_path: Path) -> None:
    files(tmp_path, {"pyproject.toml": PROJECT, "uv.lock": "version = 1\n"})
    found = resolve(spec(extras=["gpu"], groups=["test"]), tmp_path)
    assert found.selection() == ["--extra=gpu", "--group=test"]
    assert found.key_parts()["extras"] == ["gpu"] and resolve(spec(), tmp_path).key_parts() != (
        found.key_parts()
    )


def test_extras_without_a_project_is_an_error_naming_the_source(tmp_path: Path) -> None:
    files(tmp_path, {"requirements.txt": "six\n"})
    with pytest.raises(SpecError, match=r"extras and groups choose .* requirements.txt"):
        resolve(spec(groups=["dev"]), tmp_path)


def test_a_poetry_lock_takes_the_chosen_optional_group_and_extra(tmp_path: Path) -> None:
    files(tmp_path, {
        "pyproject.toml": '[tool.poetry]\nname = "p"\n[tool.poetry.group.docs]\noptional = true\n',
        "poetry.lock": (
            '[[package]]\nname = "sphinx"\nversion = "7.0"\noptional = false\ngroups = ["docs"]\n\n'
            '[[package]]\nname = "cupy"\nversion = "13.0"\noptional = true\ngroups = ["main"]\n\n'
            '[extras]\ngpu = ["cupy (>=13)"]\n'
        ),
    })  # fmt: skip
    lock = tmp_path / "poetry.lock"
    plain, _ = lockfiles.poetry_requirements(lock, tmp_path / "a")
    assert plain.read_text() == ""
    chosen, _ = lockfiles.poetry_requirements(lock, tmp_path / "b", ["gpu"], ["docs"])
    assert chosen.read_text() == "sphinx==7.0\ncupy==13.0\n"


def test_a_project_of_the_checkout_in_a_requirements_file_goes_on_sys_path_with_its_deps_installed(
    tmp_path: Path,
) -> None:
    files(tmp_path, {
        "libs/tool/pyproject.toml": PROJECT.replace("mypkg", "tool"),
        "libs/tool/src/tool/__init__.py": "",
        "envs/common.txt": "numpy\n",
        "envs/dev.txt": "-e ../libs/tool\n-r common.txt\nrich\n",
    })  # fmt: skip
    found = resolve(spec(requirements_file="envs/dev.txt"), tmp_path)
    assert [p.name for p in found.local] == ["tool"]
    assert found.pythonpath() == str(tmp_path / "libs/tool/src")
    text = found.requirements_text()
    assert text == f"-r {tmp_path / 'envs/common.txt'}\nrich\nSix>=1\nattrs\n"
    (tmp_path / "libs/tool/pyproject.toml").write_text(PROJECT.replace("mypkg", "tool") + "#\n")
    assert resolve(spec(requirements_file="envs/dev.txt"), tmp_path).sha256 == found.sha256
    (tmp_path / "libs/tool/pyproject.toml").write_text(PROJECT.replace('"attrs"', '"idna"'))
    assert resolve(spec(requirements_file="envs/dev.txt"), tmp_path).sha256 != found.sha256


def test_a_uv_lock_on_a_worker_whose_installer_is_pip_names_the_fix(tmp_path: Path) -> None:
    files(tmp_path, {"pyproject.toml": PROJECT, "uv.lock": "version = 1\n"})
    pip = get_executor("venv", ExecutorSettings(cache_root=tmp_path / "envs", installer="pip"))
    with pytest.raises(ExecutorUnavailable, match=r"uv.lock is installed with uv.*pip install uv"):
        pip.prepare(spec(), tmp_path, lambda line: None)
    assert not (tmp_path / "envs").exists(), "nothing was built"
