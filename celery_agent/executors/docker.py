"""The docker executor: run a spec in a container made from an image, with its code mounted.

``prepare`` reaches the engine, applies the pull policy, applies ``docker.setup`` once per (image,
commands) as a derived image (:mod:`.docker_setup`), asks the image once which installer it has
(uv, else pip), and installs the requirements (from the sources a venv run has, a lock file
pinned on the worker by :mod:`.docker_lock`) once per (image, requirement set, installer) into a
cached folder, with the worker's package-index configuration (:mod:`.docker_env`,
:mod:`.docker_index`). ``run`` creates a container with the checkout, output folder, run folder,
argparse hook and that folder (read-only) mounted under ``/celery-agent`` and ``/tmp``, the run's
argv and environment translated to container paths, GPUs by device request, and labels naming the
run, worker and queue. The container is supervised like a local process and removed when it ends.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..envcache import EnvCache
from ..errors import EnvBuildError, ExecutorUnavailable, RunError
from ..inputs import cache_folders
from ..params import HOOK_DIR
from ..runner import ProcessOutcome
from ..spec import DockerOptions, TaskSpec
from . import docker_lock
from . import docker_options as opt
from .base import Executor, PreparedEnv, RunRequest
from .docker_engine import connect, ensure_image, probe_installer, reap_stale_containers, short_id
from .docker_env import SiteInstall, folder_listing
from .docker_index import IndexConfig, worker_index
from .docker_netns import shared_network
from .docker_run import ContainerRun
from .docker_setup import setup_image
from .indexes import plain
from .steps import LogFn
from .venv import Requirements, read_requirements

logger = logging.getLogger(__name__)

__all__ = ["DockerExecutor", "DockerPrepared", "reap_stale_containers"]

#: seconds the availability check waits for the engine
_PING_TIMEOUT = 10


@dataclass
class DockerPrepared(PreparedEnv):
    """A prepared docker run: the image by id and the cached folder of its requirements."""

    image_id: str = ""
    options: DockerOptions | None = None
    site_dir: str | None = None  #: host folder of the installed requirements; None: nothing
    image_path: str = opt.DEFAULT_PATH  #: the image's own PATH
    index: IndexConfig = field(default_factory=IndexConfig)  #: carried into the run ("run")
    index_files: list[opt.Mount] = field(default_factory=list)  #: its config files' mounts
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
        """Get the image (pull policy, then ``docker.setup``) and its requirements: installed
        once per (image, requirement set, installer) into a cached folder, reused in place."""
        start = time.perf_counter()
        options = _options(spec)
        for volume in options.volumes:
            opt.parse_volume(volume)  # a malformed one fails here, before the engine is asked
        index = worker_index() if options.index_config != "none" else IndexConfig()
        client = connect()
        try:
            image, pulled = ensure_image(client, options.image, options.pull, log)
            if options.setup:
                image, built = setup_image(
                    client, image, options.setup, lock_dir=self._root, environ=os.environ,
                    network=options.network, log=log,
                )  # fmt: skip
                pulled = pulled or built
            reqs = (
                read_requirements(spec, source_dir, locks=True)
                if options.install
                else Requirements()
            )
            installer = self._installer(client, image, options, reqs)
        finally:
            client.close()
        _note(log, options, image, pulled, installer, spec)
        if options.install:
            log(f"env: requirements from {reqs.describe()}")
        prepared = DockerPrepared(
            python=options.python,
            env=dict(options.env),
            cache_key=short_id(image),
            cache_hit=not pulled,
            installer=installer,
            image_id=str(image.id),
            options=options,
            image_path=image_path(image),
            env_names=sorted({*spec.env, *options.env}),
        )
        if options.index_config == "run":
            prepared.index = index
            prepared.index_files = index.written(self._root / "index")
        if reqs:
            self._install(prepared, spec, reqs, source_dir, index, log)
        prepared.facts["env_source"] = reqs.describe()
        if reqs.pythonpath():  # the project's code from the mounted checkout (translated)
            prepared.env["PYTHONPATH"] = str(reqs.pythonpath())
        prepared.seconds = time.perf_counter() - start
        return prepared

    @property
    def _root(self) -> Path:
        return Path(self.settings.cache_root) / self.name

    def _install(
        self,
        prepared: DockerPrepared,
        spec: TaskSpec,
        reqs: Requirements,
        source_dir: Path,
        index: IndexConfig,
        log: LogFn,
    ) -> None:
        options = prepared.options
        assert options is not None
        links = _link_dirs(spec.find_links, source_dir)
        args = _install_args(spec, reqs, source_dir)
        if reqs.locked:  # wheels the lock takes from local folders, found through them
            found = [f for f in docker_lock.local_folders(reqs) if f not in links]
            links += found
            args += [a for f in found for a in ("--find-links", f)]
        parts = {
            "executor": "docker", "image": prepared.image_id, "python": options.python,
            "installer": prepared.installer, "requirements": list(reqs.lines),
            "requirements_file": reqs.file_sha256, "sources": dataclasses.asdict(plain(spec)),
            "find_links": [[link, folder_listing(link)] for link in links],
            "worker_index": options.index_config != "none",
        } | reqs.key_parts()  # fmt: skip
        install = SiteInstall(
            prepared.image_id, prepared.installer, options.python, args, Path(source_dir), links,
            index, options.index_config, self._root / "index", options.network, log,
            self.settings.build_timeout, reqs if reqs.locked else None,
        )  # fmt: skip
        key = EnvCache.key(parts)
        cached = self.env_cache().get_or_build(key, install, label=_label(options, reqs), hold=True)
        how = "reused" if cached.hit else "installed"
        log(f"env: requirements {how} in {cached.path} ({key}) in {cached.seconds:.3f}s")
        prepared.site_dir = str(cached.path)
        prepared.cache_key, prepared.cache_hit, prepared.lease = key, cached.hit, cached.lease
        prepared.freeze = list(cached.meta.get("freeze", []))
        prepared.facts["env_index"] = str(cached.meta.get("index", "none"))

    def _run_here(
        self, prepared: PreparedEnv, argv: Sequence[str], job: RunRequest
    ) -> ProcessOutcome:
        """Run ``argv`` (interpreter arguments) in a new container and supervise it."""
        if not isinstance(prepared, DockerPrepared) or prepared.options is None:
            raise RunError("the docker executor got an environment it did not prepare")
        if prepared.options.user:
            opt.open_to_user(_writable(job), prepared.options.user)
        client = connect()
        try:
            network = prepared.options.network or shared_network(
                client, prepared.image_id, job.labels.get("worker")
            )
            create = container_config(prepared, argv, job, network)
            return ContainerRun(client, create, job).run()
        finally:
            client.close()

    def _installer(
        self, client: Any, image: Any, options: DockerOptions, reqs: Requirements
    ) -> str:
        if not reqs:
            return "none"
        found = probe_installer(client, image, options.python, self._root)
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
    prepared: DockerPrepared, argv: Sequence[str], job: RunRequest, network: str | None = None
) -> dict[str, Any]:
    """The keyword arguments of ``containers.create`` for this run (``network``: its network
    mode when ``docker.network`` is unset, see :mod:`.docker_netns`)."""
    options = prepared.options
    assert options is not None
    paths = mount_plan(job)
    env = opt.container_env(job.env, prepared.env_names, paths) | opt.visible_devices(job.gpus)
    mounts = [*paths.mounts, *(opt.parse_volume(v) for v in options.volumes)]
    if prepared.site_dir:
        mounts.append(opt.Mount(prepared.site_dir, opt.SITE))
        env["PYTHONPATH"] = opt.with_site(env.get("PYTHONPATH"))
        env["PATH"] = f"{opt.SITE}/bin:{prepared.image_path}"
    if prepared.index:
        env = prepared.index.env | env
        mounts += [*prepared.index.mounts, *prepared.index_files]
    entry = [options.python, *(paths.translate(a) for a in argv)]
    return {
        "image": prepared.image_id,
        "command": entry,
        "entrypoint": options.entrypoint,
        "environment": env,
        "working_dir": options.workdir or paths.translate(str(job.cwd)),
        "mounts": [m.to_docker() for m in mounts],
        "labels": opt.labels(job.labels),
        "shm_size": options.shm_size,
        "network_mode": options.network or network,
        "user": options.user,
        "device_requests": opt.device_requests(job.gpus),
        "init": True,
        "detach": True,
        "stdin_open": False,
        "tty": False,
    }


def mount_plan(job: RunRequest) -> opt.PathMap:
    """The run's host folders and where they are mounted in the container."""
    paths = opt.PathMap()
    paths.add(job.source_dir or job.cwd, opt.SRC)
    if job.output_dir is not None:
        paths.add(job.output_dir, opt.OUTPUT)
    run_dir = job.env.get("CELERY_AGENT_RUN_DIR")
    if run_dir:
        paths.add(run_dir, opt.RUN)
    paths.add(HOOK_DIR, opt.HOOK, read_only=True)
    for folder in cache_folders(job.env):  # the run's inputs, at their host paths
        paths.add(folder, folder, read_only=True)
    params_out = job.env.get("CELERY_AGENT_PARAMS_OUT")
    if params_out and not paths.covers(params_out):
        paths.add(Path(params_out).parent, opt.PARAMS)
    return paths


def _writable(job: RunRequest) -> list[str]:
    """The run's folders its container writes: output, run folder, the params file's folder, and
    the checkpoint folder (a resumed run's is made by the worker, restoring into it)."""
    found = [str(job.output_dir)] if job.output_dir is not None else []
    names = ("CELERY_AGENT_RUN_DIR", "CELERY_AGENT_CHECKPOINT_DIR")
    found += [job.env[n] for n in names if job.env.get(n)]
    params_out = job.env.get("CELERY_AGENT_PARAMS_OUT")
    return found + ([str(Path(params_out).parent)] if params_out else [])


def image_path(image: Any) -> str:
    """The PATH an image sets, else the usual default."""
    for item in (image.attrs.get("Config") or {}).get("Env") or []:
        if item.startswith("PATH="):
            return str(item[5:])
    return opt.DEFAULT_PATH


def _label(options: DockerOptions, reqs: Requirements) -> str:
    names = ", ".join(reqs.lines[:4]) + (" ..." if len(reqs.lines) > 4 else "")
    return f"{options.image}: {names or reqs.rel or 'requirements.txt'}"


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
    if reqs.locked:  # the pinned file is added when the lock is installed (docker_lock)
        return sources.args()
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
    step = f"requirements installed with {installer} into a cached folder"
    if installer == "none":
        step = "nothing to install" if options.install else "docker.install is false"
    log(f"env: image {options.image} ({short_id(image)}, {how}); {step}")
    if not options.install and spec.requirements:
        log("env: the spec's requirements are not installed (docker.install is false)")
