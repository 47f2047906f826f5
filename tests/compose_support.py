"""A docker-compose project of deploy/ on the real engine, for tests: up, exec, metrics, down.

Works with the compose plugin (`docker compose`) or the standalone `docker-compose` (Debian's
package); neither pulls or builds here: the image comes from scripts/build-image.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
FILES = (DEPLOY / "docker-compose.yml", DEPLOY / "docker-compose.noregistry.yml")
PROJECT_LABEL = "com.docker.compose.project"


def compose_cli() -> list[str] | None:
    """The compose command of this machine (plugin first), or None when there is none."""
    if shutil.which("docker"):
        done = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
        if done.returncode == 0:
            return ["docker", "compose"]
    found = shutil.which("docker-compose")
    return [found] if found else None


def free_port() -> int:
    """A TCP port nothing listens on right now (any address)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """Status and body of a GET."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read().decode()


class Stack:
    """One compose project: the deploy/ files, an override of the test's own, a unique name."""

    def __init__(self, cli: list[str], name: str, override: Path, env: dict[str, str]) -> None:
        self.cli = cli
        self.name = name
        self.files = (*FILES, override)
        self.env = env

    def compose(self, *args: str, timeout: float = 180, check: bool = True) -> str:
        """Run a compose command of this project; its output (stdout, then stderr)."""
        argv = [*self.cli, "-p", self.name, *(a for f in self.files for a in ("-f", str(f)))]
        argv += ["--profile", "cpu", *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.env)
        out = done.stdout + done.stderr
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{out[-3000:]}")
        return out

    def up(self, workers: int) -> None:
        """Start everything but the GPU workers, with ``workers`` CPU workers; pulls nothing."""
        self.compose("up", "-d", "--no-build", "--scale", f"cpu={workers}", timeout=300)

    def execute(self, service: str, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the first container of ``service``, as an orchestrator's probe does."""
        (first, *_) = sorted(self.containers(service), key=lambda c: str(c["Name"]))
        return subprocess.run(["docker", "exec", str(first["Id"]), *argv], capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    def validate(self, *profiles: str) -> str:
        """`config --quiet` of the files with these profiles on: the parts this machine cannot
        start (GPU reservations, the rabbitmq image) are still checked by compose itself."""
        argv = [*self.cli, *(a for f in self.files for a in ("-f", str(f)))]
        argv += [a for p in profiles for a in ("--profile", p)]
        done = subprocess.run([*argv, "config", "--quiet"], capture_output=True, text=True,
                              timeout=120, env=self.env)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    def containers(self, service: str | None = None) -> list[dict[str, object]]:
        """`docker inspect` of the project's containers (of one service), running or not."""
        filters = ["--filter", f"label={PROJECT_LABEL}={self.name}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        ids = _docker("ps", "-aq", *filters).split()
        return json.loads(_docker("inspect", *ids)) if ids else []

    def health(self, service: str) -> list[str]:
        """Each container's health status (starting, healthy, unhealthy)."""
        return [str(c["State"]["Health"]["Status"]) for c in self.containers(service)]  # type: ignore[index]

    def logs(self) -> str:
        """The last lines of every container's output, for a failure's message."""
        return self.compose("logs", "--no-color", "--tail", "40", check=False)

    def leftovers(self) -> dict[str, list[str]]:
        """The project's containers, networks and volumes still in the engine."""
        label = f"label={PROJECT_LABEL}={self.name}"
        found = {
            "containers": _docker("ps", "-aq", "--filter", label).split(),
            "networks": _docker("network", "ls", "-q", "--filter", label).split(),
            "volumes": _docker("volume", "ls", "-q", "--filter", label).split(),
        }
        return {kind: names for kind, names in found.items() if names}

    def down(self) -> None:
        """Stop and remove the containers, networks and volumes (the workers drain first)."""
        self.compose("down", "-v", "--remove-orphans", "--timeout", "20", timeout=300)


def reap_stale(prefix: str, older_than: float = 3600) -> list[str]:
    """Remove what compose projects named ``prefix...`` left behind when their test was killed
    before its teardown (containers, then networks and volumes), once their newest container is
    ``older_than`` seconds old; their names."""
    rows = _docker("ps", "-a", "--filter", f"label={PROJECT_LABEL}", "--format",
                   f'{{{{.Label "{PROJECT_LABEL}"}}}}\t{{{{.ID}}}}').split("\n")  # fmt: skip
    projects: dict[str, list[str]] = {}
    for name, _, cid in (row.partition("\t") for row in rows if row.startswith(prefix)):
        projects.setdefault(name, []).append(cid)
    reaped = []
    for name, ids in projects.items():
        created = [str(c["Created"]) for c in json.loads(_docker("inspect", *ids))]
        newest = max(datetime.fromisoformat(c[:19]).replace(tzinfo=UTC) for c in created)
        if (datetime.now(UTC) - newest).total_seconds() < older_than:
            continue  # another test of the same kind, running now
        label = f"label={PROJECT_LABEL}={name}"
        _docker("rm", "-f", "-v", *ids)
        for kind in ("network", "volume"):
            found = _docker(kind, "ls", "-q", "--filter", label).split()
            if found:
                _docker(kind, "rm", *found)
        reaped.append(name)
    return reaped


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the settings that would point the stack elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY", "COMPOSE_"))}
    return env | extra


def _docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout
