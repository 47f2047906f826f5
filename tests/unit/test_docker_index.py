"""The worker's package-index configuration as a container gets it, and install errors that say
what to set; checked with config files written here, without an engine."""

from __future__ import annotations

from pathlib import Path

from celery_agent.executors.docker_env import install_error, installed
from celery_agent.executors.docker_index import INDEX_DIR, mount_paths, worker_index
from celery_agent.executors.docker_setup import dockerfile, setup_key


def _layout(tmp_path: Path) -> dict[str, str]:
    """A worker home with pip's global and user config, a CA bundle, wheels and a file index."""
    etc, home = tmp_path / "etc", tmp_path / "home"
    (etc / "pip").mkdir(parents=True)
    (home / ".config" / "pip").mkdir(parents=True)
    for folder in ("wheels", "mirror/simple/six", "mirror/files"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "ca.pem").write_text("CA")
    (tmp_path / "constraints.txt").write_text("torch<3\n")
    (etc / "pip" / "pip.conf").write_text(
        f"[global]\ncert = {tmp_path}/ca.pem\nconstraint = {tmp_path}/constraints.txt\n"
        "timeout = 10\n"
    )
    (home / ".config" / "pip" / "pip.conf").write_text(
        f"[global]\ntimeout = 30\nfind-links = {tmp_path}/wheels\n"
        f"extra-index-url = file://{tmp_path}/mirror/simple https://bob:s3cret@pkgs.example/simple\n"
    )
    return {"XDG_CONFIG_DIRS": str(etc), "HOME": str(home), "PATH": "/usr/bin"}


def test_pip_files_are_merged_as_pip_reads_them_and_what_they_name_is_mounted(tmp_path) -> None:
    environ = _layout(tmp_path) | {"PIP_DEFAULT_TIMEOUT": "180", "https_proxy": "http://p:3128"}
    index = worker_index(environ, etc=str(tmp_path))
    merged = index.files["pip.conf"]
    assert "timeout = 30" in merged and "timeout = 10" not in merged, "the user file wins"
    assert f"cert = {tmp_path}/ca.pem" in merged
    assert index.env["PIP_CONFIG_FILE"] == f"{INDEX_DIR}/pip.conf"
    assert index.env["PIP_DEFAULT_TIMEOUT"] == "180" and index.env["https_proxy"] == "http://p:3128"
    assert "PATH" not in index.env and "HOME" not in index.env
    mounted = {m.source: (m.target, m.read_only) for m in index.mounts}
    assert mounted == {
        str(tmp_path / p): (str(tmp_path / p), True)
        for p in ("ca.pem", "constraints.txt", "wheels", "mirror")
    }, "a folder named simple brings its parent, where its pages link to"


def test_nothing_secret_is_shown(tmp_path) -> None:
    index = worker_index(_layout(tmp_path), etc=str(tmp_path))
    assert "s3cret" not in index.summary and "bob" not in index.summary
    assert "pip.conf" in index.summary and str(tmp_path / "ca.pem") in index.summary
    line = "Looking in indexes: https://bob:s3cret@pkgs.example/simple, token s3cret"
    assert index.mask(line) == "Looking in indexes: https://pkgs.example/simple, token ***"


def test_where_to_install_and_cache_stays_the_containers(tmp_path) -> None:
    environ = {"PIP_TARGET": "/x", "PIP_CACHE_DIR": "/c", "UV_CACHE_DIR": "/c", "UV_PYTHON": "3.9",
               "PIP_CONFIG_FILE": "/dev/null", "UV_INDEX_URL": "https://i/simple", "HOME": str(tmp_path),
               "XDG_CONFIG_DIRS": str(tmp_path / "none")}  # fmt: skip
    index = worker_index(environ, etc=str(tmp_path))
    assert index.env == {"UV_INDEX_URL": "https://i/simple"}
    assert "pip.conf" not in index.files


def test_uv_config_is_carried_and_its_paths_mounted(tmp_path) -> None:
    (tmp_path / "wheels").mkdir()
    (tmp_path / "uv.toml").write_text(
        f'find-links = ["{tmp_path}/wheels"]\n[[index]]\nurl = "https://u:pw@x.example/simple"\n'
    )
    environ = {"UV_CONFIG_FILE": str(tmp_path / "uv.toml"), "HOME": str(tmp_path),
               "XDG_CONFIG_DIRS": str(tmp_path / "none"), "PIP_CONFIG_FILE": "/dev/null"}  # fmt: skip
    index = worker_index(environ, etc=str(tmp_path))
    assert index.env == {"UV_CONFIG_FILE": f"{INDEX_DIR}/uv.toml"}
    assert [m.source for m in index.mounts] == [str(tmp_path / "wheels")]
    assert index.mask("https://u:pw@x.example/simple pw") == "https://x.example/simple ***"


def test_config_files_are_written_private_and_by_content(tmp_path) -> None:
    index = worker_index(_layout(tmp_path), etc=str(tmp_path))
    first = index.written(tmp_path / "cfg")
    again = index.written(tmp_path / "cfg")
    assert first == again and [m.target for m in first] == [f"{INDEX_DIR}/pip.conf"]
    assert Path(first[0].source).stat().st_mode & 0o777 == 0o600
    assert Path(first[0].source).read_text() == index.files["pip.conf"]


def test_broad_or_missing_paths_are_not_mounted(tmp_path) -> None:
    (tmp_path / "w").mkdir()
    named = f"/etc file:///usr {tmp_path}/absent https://x/simple {tmp_path}/w {tmp_path}/w/sub"
    assert mount_paths([named, f"name=file://{tmp_path}/w"]) == [str(tmp_path / "w")]


def test_an_untrusted_index_certificate_names_the_index_and_what_to_set() -> None:
    lines = [
        "WARNING: Retrying (Retry(total=4)) after connection broken by 'SSLError(...)': /simple/six/",
        "Could not fetch URL https://pypi.org/simple/six/: There was a problem confirming the ssl "
        "certificate: ... certificate verify failed: self-signed certificate in certificate chain",
        "ERROR: No matching distribution found for six",
    ]
    err = install_error(lines, 1, "pip", "none")
    assert "package index https://pypi.org/simple" in err.message
    assert "self-signed certificate in certificate chain" in err.message
    assert "Could not fetch URL" in err.message
    assert "set docker.index_config to 'install'" in (err.hint or "")
    carried = install_error(lines, 1, "pip", "install")
    assert "PIP_CERT" in (carried.hint or "") and "index_config" not in (carried.hint or "")


def test_other_install_failures_keep_the_installers_last_lines() -> None:
    err = install_error(["ERROR: No matching distribution found for nosuch"], 1, "uv", "install")
    assert "uv install in the container failed (exit 1)" in err.message
    assert "No matching distribution found for nosuch" in err.message


def test_installed_distributions_are_read_from_the_folder(tmp_path) -> None:
    for name in ("six-1.17.0.dist-info", "numpy-2.1.0.dist-info", "numpy", "bin"):
        (tmp_path / name).mkdir()
    assert installed(tmp_path) == ["numpy==2.1.0", "six==1.17.0"]


def test_setup_runs_as_root_and_gives_the_image_its_user_back() -> None:
    text = dockerfile("sha256:1", "app", ["apt-get update &&\\\n  apt-get install -y libgl1"])
    assert text.splitlines() == [
        "FROM sha256:1", "USER root", "RUN apt-get update && \\", "    apt-get install -y libgl1",
        "USER app",
    ]  # fmt: skip
    assert "USER" not in dockerfile("sha256:1", "", ["true"])
    assert setup_key("sha256:1", ["a"]) != setup_key("sha256:1", ["b"])
    assert setup_key("sha256:1", ["a"]) != setup_key("sha256:2", ["a"])
