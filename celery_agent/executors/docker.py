"""The docker executor: run a spec in a container made from an image, with its code mounted.

``prepare`` reaches the engine, applies the pull policy and, when requirements are to be installed,
asks the image once which installer it has (uv, else pip). ``run`` creates a container with the
checkout, output folder, run folder and argparse hook mounted under ``/celery-agent``, the run's
argv and environment translated to container paths, GPUs by device request, and labels naming the
run, worker and queue; its command installs the requirements (pip cache in a shared volume) and then
execs the entry. The container is supervised like a local process and removed when the run ends.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EnvBuildError, ExecutorUnavailable, RunError
from ..params import HOOK_DIR
from ..runner import ProcessOutcome
from ..spec import DockerOptions, TaskSpec
from . import docker_options as opt
from .base import Executor, PreparedEnv, RunRequest
from .docker_engine import connect, ensure_image, probe_installer, reap_stale_containers, short_id
from .docker_run import ContainerRun
from .indexes import plain
from .steps import LogFn
from .venv import Requirements, read_requirements

logger = logging.getLogger(__name__)

__all__ = ["DockerExecutor", "DockerPrepared", "reap_stale_containers"]

#: seconds the availability check waits for the engine
_PING_TIMEOUT = 10


@dataclass
class DockerPrepared(PreparedEnv):
    """A prepared docker run: the image by id and what the container must do before the entry."""

    image_id: str = ""
    options: DockerOptions | None = None
    install_args: list[str] = field(default_factory=list)  #: host paths; empty: no install step
    link_dirs: list[str] = field(default_factory=list)  #: local find-links folders to mount
    env_names: list[str] = field(default_factory=list)  #: the spec's and docker options' variables


class DockerExecutor(Executor):
    """Runs a spec inside a container of ``spec.docker.image`` on this worker's Docker engine."""

    name = "docker"

    def unavailable_reason(self) -> str | None:
        """None when the docker package is installed and an engine answers, else why not."""
        try:
            connect(timeout=_PING_TIMEOUT).close()
        except ExecutorUnavailable as exc:
            return str(exc)
        return None

    def prepare(self, spec: TaskSpec, source_dir: Path, log: LogFn) -> PreparedEnv:
        """Get the image (pull policy) and plan the install step; installs happen at run time."""
        start = time.perf_counter()
        options = _options(spec)
        for volume in options.volumes:
            opt.parse_volume(volume)  # a malformed one fails here, before the engine is asked
        client = connect()
        try:
            image, pulled = ensure_image(client, options.image, options.pull, log)
            reqs = read_requirements(spec, source_dir) if options.install else Requirements()
            installer = self._installer(client, image, options, reqs)
        finally:
            client.close()
        _note(log, options, image, pulled, installer, spec)
        links = _link_dirs(spec.find_links, source_dir) if reqs else []
        return DockerPrepared(
            python=options.python,
            env=dict(options.env),
            cache_key=short_id(image),
            cache_hit=not pulled,
            seconds=time.perf_counter() - start,
            installer=installer,
            image_id=str(image.id),
            options=options,
            install_args=_install_args(spec, reqs, source_dir) if reqs else [],
            link_dirs=links,
            env_names=sorted({*spec.env, *options.env}),
        )

    def run(self, prepared: PreparedEnv, argv: Sequence[str], job: RunRequest) -> ProcessOutcome:
        """Run ``argv`` (interpreter arguments) in a new container and supervise it."""
        if not isinstance(prepared, DockerPrepared) or prepared.options is None:
            raise RunError("the docker executor got an environment it did not prepare")
        create = container_config(prepared, argv, job)
        client = connect()
        try:
            return ContainerRun(client, create, job).run()
        finally:
            client.close()

    def _installer(
        self, client: Any, image: Any, options: DockerOptions, reqs: Requirements
    ) -> str:
        if not reqs:
            return "none"
        found = probe_installer(client, image, options.python, self.settings.cache_root / "docker")
        if found == "missing":
            raise EnvBuildError(
                f"image {options.image!r} has no interpreter {options.python!r}",
                "set docker.python to the image's interpreter (e.g. python or /opt/conda/bin/python)",
            )
        if found not in ("uv", "pip"):
            raise EnvBuildError(
                f"image {options.image!r} has neither uv nor pip for {options.python}",
                "use an image with pip, or install the requirements in the image and set "
                "docker.install to false",
            )
        return found


def container_config(
    prepared: DockerPrepared, argv: Sequence[str], job: RunRequest
) -> dict[str, Any]:
    """The keyword arguments of ``containers.create`` for this run."""
    options = prepared.options
    assert options is not None
    paths = mount_plan(job, prepared.link_dirs)
    env = opt.container_env(job.env, prepared.env_names, paths) | opt.visible_devices(job.gpus)
    install = None
    if prepared.install_args:
        install_args = [paths.translate(a) for a in prepared.install_args]
        install = opt.install_argv(prepared.installer, options.python, install_args)
        env |= opt.installer_env(prepared.installer)
        env["PYTHONPATH"] = opt.with_site(env.get("PYTHONPATH"))
    mounts = [*paths.mounts, *(opt.parse_volume(v) for v in options.volumes)]
    if install:
        mounts.append(opt.Mount(opt.CACHE_VOLUME, opt.CACHE, read_only=False))
    entry = [options.python, *(paths.translate(a) for a in argv)]
    return {
        "image": prepared.image_id,
        "command": opt.bootstrap(install, entry, prepared.installer),
        "entrypoint": options.entrypoint,
        "environment": env,
        "working_dir": options.workdir or paths.translate(str(job.cwd)),
        "mounts": [m.to_docker() for m in mounts],
        "labels": opt.labels(job.labels),
        "shm_size": options.shm_size,
        "network_mode": options.network,
        "user": options.user,
        "device_requests": opt.device_requests(job.gpus),
        "init": True,
        "detach": True,
        "stdin_open": False,
        "tty": False,
    }


def mount_plan(job: RunRequest, link_dirs: Sequence[str] = ()) -> opt.PathMap:
    """The run's host folders and where they are mounted in the container."""
    paths = opt.PathMap()
    paths.add(job.source_dir or job.cwd, opt.SRC)
    if job.output_dir is not None:
        paths.add(job.output_dir, opt.OUTPUT)
    run_dir = job.env.get("CELERY_AGENT_RUN_DIR")
    if run_dir:
        paths.add(run_dir, opt.RUN)
    paths.add(HOOK_DIR, opt.HOOK, read_only=True)
    params_out = job.env.get("CELERY_AGENT_PARAMS_OUT")
    if params_out and not paths.covers(params_out):
        paths.add(Path(params_out).parent, opt.PARAMS)
    for i, folder in enumerate(link_dirs):
        if not paths.covers(folder):
            paths.add(folder, f"{opt.LINKS}/{i}", read_only=True)
    return paths


def _options(spec: TaskSpec) -> DockerOptions:
    if spec.docker is None:
        raise EnvBuildError(
            "the docker executor needs docker options",
            "give docker={'image': 'python:3.11-slim'} in the spec",
        )
    return spec.docker


def _install_args(spec: TaskSpec, reqs: Requirements, source_dir: Path) -> list[str]:
    """Installer arguments after ``install``: index options, then the requirements."""
    links = [str(_local_folder(link, source_dir) or link) for link in spec.find_links]
    sources = dataclasses.replace(plain(spec), find_links=tuple(links))
    return sources.args() + (["-r", str(reqs.file)] if reqs.file else list(reqs.lines))


def _local_folder(link: str, source_dir: Path) -> Path | None:
    """The host folder a find-links entry names (relative ones are in the checkout), else None."""
    if "://" in link and not link.startswith("file://"):
        return None
    folder = Path(source_dir) / Path(link.removeprefix("file://")).expanduser()
    return folder if folder.is_dir() else None


def _link_dirs(links: Sequence[str], source_dir: Path) -> list[str]:
    found = (_local_folder(link, source_dir) for link in links)
    return [str(folder) for folder in found if folder is not None]


def _note(
    log: LogFn, options: DockerOptions, image: Any, pulled: bool, installer: str, spec: TaskSpec
) -> None:
    how = "pulled" if pulled else "present"
    step = f"requirements installed in the container with {installer}"
    if installer == "none":
        step = "nothing to install" if options.install else "docker.install is false"
    log(f"env: image {options.image} ({short_id(image)}, {how}); {step}")
    if not options.install and spec.requirements:
        log("env: the spec's requirements are not installed (docker.install is false)")
