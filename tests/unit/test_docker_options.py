"""The docker executor's translation of a run into a container, checked without an engine."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from celery_agent.errors import ExecutorUnavailable, SpecError
from celery_agent.executors import ExecutorSettings, get_executor
from celery_agent.executors import docker_options as opt
from celery_agent.executors.base import RunRequest
from celery_agent.executors.docker import (
    DockerPrepared,
    container_config,
    mount_plan,
    reap_stale_containers,
)
from celery_agent.executors.docker_index import IndexConfig
from celery_agent.params import HOOK_DIR
from celery_agent.spec import DockerOptions, TaskSpec


# -- volumes --------------------------------------------------------------------------------------
def test_volume_is_read_only_unless_it_says_rw() -> None:
    assert opt.parse_volume("/data:/data") == opt.Mount("/data", "/data", read_only=True)
    assert opt.parse_volume("/data:/mnt/d:ro").read_only is True
    assert opt.parse_volume("/scratch:/scratch/:rw") == opt.Mount("/scratch", "/scratch", False)


def test_volume_may_name_a_named_volume() -> None:
    mount = opt.parse_volume("hf-cache:/root/.cache/huggingface:rw")
    assert mount.is_volume and mount.source == "hf-cache" and not mount.read_only


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("/data", "malformed"),
        ("/a:/b:rx", "malformed"),
        ("/a:/b:ro:x", "malformed"),
        ("./data:/data", "absolute path or a volume name"),
        ("/data:data", "container side must be an absolute path"),
    ],
)
def test_bad_volume_is_a_spec_error_naming_it(text: str, words: str) -> None:
    with pytest.raises(SpecError) as err:
        opt.parse_volume(text)
    assert words in err.value.message and text in err.value.message and err.value.hint


def test_mount_becomes_a_docker_bind_or_volume_mount() -> None:
    bind = opt.Mount("/data", "/d", read_only=True).to_docker()
    volume = opt.Mount("cache", "/c", read_only=False).to_docker()
    assert (bind["Type"], bind["Source"], bind["Target"], bind["ReadOnly"]) == (
        "bind",
        "/data",
        "/d",
        True,
    )
    assert (volume["Type"], volume["ReadOnly"]) == ("volume", False)


# -- paths ----------------------------------------------------------------------------------------
def test_path_map_translates_the_deepest_mount_and_leaves_others() -> None:
    paths = opt.PathMap()
    paths.add("/runs/r1", opt.RUN)
    paths.add("/runs/r1/src", opt.SRC)
    assert paths.translate("/runs/r1/src/train.py") == "/celery-agent/src/train.py"
    assert paths.translate("/runs/r1/params.json") == "/celery-agent/run/params.json"
    assert paths.translate("/runs/r1") == "/celery-agent/run"
    assert paths.translate("/runs/r10/x") == "/runs/r10/x"
    assert paths.translate("--lr") == "--lr" and paths.translate("/etc/hosts") == "/etc/hosts"
    assert paths.translate_list("/runs/r1/src:/opt/lib") == "/celery-agent/src:/opt/lib"


def test_path_map_matches_through_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "src").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    paths = opt.PathMap()
    paths.add(tmp_path / "link" / "src", opt.SRC)
    assert paths.translate(str(real / "src" / "a.py")) == "/celery-agent/src/a.py"


def test_adding_the_same_folder_twice_mounts_it_once() -> None:
    paths = opt.PathMap()
    assert paths.add("/x/", opt.SRC) == opt.SRC
    assert paths.add("/x", opt.RUN) == opt.SRC
    assert len(paths.mounts) == 1


# -- environment ----------------------------------------------------------------------------------
def test_container_env_keeps_agent_and_spec_variables_and_drops_the_workers() -> None:
    paths = opt.PathMap()
    paths.add("/runs/r1", opt.RUN)
    paths.add(HOOK_DIR, opt.HOOK)
    run_env = {
        "PATH": "/root/.venv/bin:/usr/bin", "HOME": "/root", "REDIS_PASSWORD": "s3cret",
        "CUDA_VISIBLE_DEVICES": "GPU-1", "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1",
        "CELERY_AGENT_OUTPUT_DIR": "/runs/r1/output", "CELERY_AGENT_RUN_ID": "r1",
        "PYTHONPATH": f"{HOOK_DIR}:/opt/extra", "NCCL_DEBUG": "INFO", "MY_FLAG": "on",
    }  # fmt: skip
    env = opt.container_env(run_env, ["MY_FLAG"], paths)
    assert env == {
        "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1",
        "CELERY_AGENT_OUTPUT_DIR": "/celery-agent/run/output", "CELERY_AGENT_RUN_ID": "r1",
        "PYTHONPATH": "/celery-agent/hook:/opt/extra", "NCCL_DEBUG": "INFO", "MY_FLAG": "on",
    }  # fmt: skip


def test_a_spec_variable_named_like_a_worker_one_is_passed() -> None:
    env = opt.container_env({"PATH": "/opt/bin:/usr/bin", "HOME": "/h"}, ["PATH"], opt.PathMap())
    assert env == {"PATH": "/opt/bin:/usr/bin"}


def test_installed_requirements_come_right_after_the_hook() -> None:
    assert opt.with_site("/celery-agent/hook:/x") == f"/celery-agent/hook:{opt.SITE}:/x"
    assert opt.with_site("/x") == f"{opt.SITE}:/x"
    assert opt.with_site(None) == opt.SITE


# -- labels, GPUs, install ------------------------------------------------------------------------
def test_labels_name_the_run_worker_and_queue() -> None:
    labels = opt.labels({"run_id": "abc", "worker": "gpu0@h", "queue": "gpu0"})
    assert labels == {
        "celery-agent.managed": "true",
        "celery-agent.run-id": "abc",
        "celery-agent.worker": "gpu0@h",
        "celery-agent.queue": "gpu0",
    }


def test_gpus_become_one_device_request_for_exactly_those() -> None:
    (request,) = opt.device_requests(["GPU-aaaa", "GPU-bbbb"]) or []
    assert request["DeviceIDs"] == ["GPU-aaaa", "GPU-bbbb"]
    assert request["Capabilities"] == [["gpu"]]
    assert request.get("Count") in (None, 0)  # never "all GPUs" (-1)


def test_no_gpus_means_no_device_request() -> None:
    assert opt.device_requests([]) is None


def test_visible_devices_names_the_runs_gpus_or_none_never_all() -> None:
    assert opt.visible_devices(["GPU-a", "GPU-b"]) == {"NVIDIA_VISIBLE_DEVICES": "GPU-a,GPU-b"}
    assert opt.visible_devices([]) == {"NVIDIA_VISIBLE_DEVICES": "void"}


def test_install_commands_target_the_site_folder() -> None:
    pip = opt.install_argv("pip", "python3", ["--no-index", "cademo"])
    uv = opt.install_argv("uv", "python3", ["cademo"])
    assert pip[:4] == ["python3", "-m", "pip", "install"] and pip[-4:-2] == ["--target", opt.SITE]
    assert uv[:3] == ["uv", "pip", "install"] and uv[4:6] == ["--python", "python3"]
    assert opt.installer_env("uv")["UV_CACHE_DIR"].startswith(opt.CACHE)
    assert opt.installer_env("pip")["PIP_CACHE_DIR"].startswith(opt.CACHE)


# -- the whole container config -------------------------------------------------------------------
def _job(run: Path, **kw: object) -> RunRequest:
    env = {
        "PATH": "/usr/bin", "HOME": "/root", "CELERY_AGENT_RUN_DIR": str(run),
        "CELERY_AGENT_PARAMS_OUT": str(run / "params.json"), "PYTHONPATH": str(HOOK_DIR),
    }  # fmt: skip
    fields: dict[str, object] = {
        "env": env, "cwd": run / "src" / "sub", "sink": lambda lines: None,
        "source_dir": run / "src", "output_dir": run / "output",
        "labels": {"run_id": "r1", "worker": "w1", "queue": "q"},
    }  # fmt: skip
    return RunRequest(**(fields | kw))  # type: ignore[arg-type]


def test_container_config_translates_argv_cwd_and_mounts(tmp_path: Path) -> None:
    run = tmp_path / "r1"
    options = DockerOptions(image="img", volumes=["/data:/data"], shm_size="1g", network="none")
    prepared = DockerPrepared(python="python3", options=options, image_id="sha256:1", env_names=[])
    config = container_config(prepared, [str(run / "src" / "t.py"), "--lr", "0.5"], _job(run))
    assert config["command"] == ["python3", "/celery-agent/src/t.py", "--lr", "0.5"]
    assert config["working_dir"] == "/celery-agent/src/sub"
    assert config["environment"]["CELERY_AGENT_PARAMS_OUT"] == "/celery-agent/run/params.json"
    assert "PATH" not in config["environment"] and "HOME" not in config["environment"]
    assert config["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    targets = {m["Target"]: (m["Source"], m["ReadOnly"]) for m in config["mounts"]}
    assert targets["/celery-agent/src"] == (str(run / "src"), False)
    assert targets["/celery-agent/output"] == (str(run / "output"), False)
    assert targets["/celery-agent/hook"] == (str(HOOK_DIR), True)
    assert targets["/data"] == ("/data", True)
    assert (config["shm_size"], config["network_mode"], config["device_requests"]) == (
        "1g",
        "none",
        None,
    )
    assert config["labels"]["celery-agent.run-id"] == "r1"


def test_container_config_with_installed_requirements_mounts_them_read_only(tmp_path: Path) -> None:
    run, site = tmp_path / "r1", tmp_path / "cache" / "k1" / "env"
    prepared = DockerPrepared(
        python="python3", options=DockerOptions(image="img"), image_id="sha256:1",
        installer="pip", site_dir=str(site), image_path="/opt/py/bin:/usr/bin",
    )  # fmt: skip
    config = container_config(prepared, ["t.py"], _job(run, gpus=["0"]))
    assert config["command"] == ["python3", "t.py"]
    targets = {m["Target"]: (m["Source"], m["ReadOnly"]) for m in config["mounts"]}
    assert targets[opt.SITE] == (str(site), True)
    assert config["environment"]["PYTHONPATH"] == f"/celery-agent/hook:{opt.SITE}"
    assert config["environment"]["PATH"] == f"{opt.SITE}/bin:/opt/py/bin:/usr/bin"
    assert config["device_requests"][0]["DeviceIDs"] == ["0"]
    assert config["environment"]["NVIDIA_VISIBLE_DEVICES"] == "0"


def test_index_config_run_carries_the_index_into_the_run(tmp_path: Path) -> None:
    index = IndexConfig(
        env={"PIP_CERT": "/etc/ca.pem"}, mounts=(opt.Mount("/etc/ca.pem", "/etc/ca.pem"),)
    )
    prepared = DockerPrepared(
        python="python3", options=DockerOptions(image="img", index_config="run"),
        image_id="sha256:1", index=index,
    )  # fmt: skip
    config = container_config(prepared, ["t.py"], _job(tmp_path / "r1"))
    assert config["environment"]["PIP_CERT"] == "/etc/ca.pem"
    targets = {m["Target"]: (m["Source"], m["ReadOnly"]) for m in config["mounts"]}
    assert targets["/etc/ca.pem"] == ("/etc/ca.pem", True)
    plain = container_config(
        replace(prepared, index=IndexConfig()), ["t.py"], _job(tmp_path / "r1")
    )
    assert "PIP_CERT" not in plain["environment"]


def test_a_non_root_user_gets_the_runs_folders_opened(tmp_path: Path) -> None:
    out, run = tmp_path / "output", tmp_path / "run"
    opt.open_to_user([out, run], "1000:1000")
    for folder in (out, run):
        st = folder.stat()
        if os.geteuid() == 0:
            assert (st.st_uid, st.st_gid) == (1000, 1000)
        else:
            assert st.st_mode & 0o777 == 0o777
    named = tmp_path / "named"
    opt.open_to_user([named], "app")
    assert named.stat().st_mode & 0o777 == 0o777
    untouched = tmp_path / "root"
    untouched.mkdir(mode=0o755)
    opt.open_to_user([untouched], "root")
    assert untouched.stat().st_mode & 0o777 == 0o755


def test_params_file_outside_the_run_dir_gets_its_own_mount(tmp_path: Path) -> None:
    job = _job(tmp_path / "r1")
    job.env["CELERY_AGENT_PARAMS_OUT"] = str(tmp_path / "elsewhere" / "p.json")
    del job.env["CELERY_AGENT_RUN_DIR"]
    paths = mount_plan(job)
    assert paths.translate(job.env["CELERY_AGENT_PARAMS_OUT"]) == f"{opt.PARAMS}/p.json"


# -- no engine ------------------------------------------------------------------------------------
DEAD = "unix:///nonexistent/docker.sock"


def test_unreachable_engine_is_named_with_the_fix(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", DEAD)
    executor = get_executor("docker", ExecutorSettings(cache_root=tmp_path))
    reason = executor.unavailable_reason() or ""
    assert f"no Docker engine reachable at {DEAD}" in reason and "DOCKER_HOST" in reason
    spec = TaskSpec(repo=".", entry="t.py", executor="docker", docker={"image": "img"})
    with pytest.raises(ExecutorUnavailable) as err:
        executor.prepare(spec, tmp_path, lambda line: None)
    assert DEAD in err.value.message and "dockerd" in (err.value.hint or "")


def test_reaping_without_an_engine_does_nothing(monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", DEAD)
    assert reap_stale_containers("w1@host") == 0


def test_bad_volume_is_rejected_when_the_spec_is_built() -> None:
    docker = {"image": "img", "volumes": ["data:/data:rx"]}
    with pytest.raises(SpecError, match="docker volume 'data:/data:rx' is malformed"):
        TaskSpec.parse({"repo": ".", "entry": "t.py", "executor": "docker", "docker": docker})


def test_the_workers_shared_network_applies_only_when_the_spec_names_none(tmp_path: Path) -> None:
    job = _job(tmp_path / "r1")
    shared = DockerPrepared(python="python3", options=DockerOptions(image="img"), image_id="s:1")
    assert (
        container_config(shared, ["t.py"], job, "container:abc")["network_mode"] == "container:abc"
    )
    own = replace(shared, options=DockerOptions(image="img", network="bridge"))
    assert container_config(own, ["t.py"], job, "container:abc")["network_mode"] == "bridge"
