"""`celery-agent redis`: the Procfile's Redis, which stops after the processes that use it.

honcho stops every process of a Procfile at once. A Redis that went first would leave the
draining workers nothing to write their last states to (runs put back on their queues, the
worker's clean stop), so this process keeps redis-server running after its own SIGTERM until
every other client has left, for at most ``linger`` seconds (4 s: honcho kills what is left after
5 s), then stops it; the server writes its append-only file as it goes. A second signal stops it
at once. When a Redis already answers on the port, that one is used and nothing is started.

redis-server runs in a session of its own (so a signal to this process's group does not reach it
first) and gets SIGTERM when this process dies (Linux).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time

import redis

from .embedded import EmbeddedRedis, _answers
from .supervisor import die_with

logger = logging.getLogger(__name__)

LINGER = 4.0  #: seconds to wait for clients to leave once asked to stop
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
POLL = 0.1


def serve(server: EmbeddedRedis, linger: float = LINGER) -> int:
    """Run ``server`` in the foreground (log on stdout) until SIGTERM or SIGINT; returns the
    exit code (redis-server's own, or 0 when a Redis already answered and was used)."""
    if _answers(server.url):
        logger.warning("a Redis already answers at %s: using it, starting none (stop that one, "
                       "or set REDIS_PORT and CELERY_AGENT_REDIS_URL to run one here)",
                       server.url)  # fmt: skip
        _wait_for_signal(None)
        return 0
    server.data_dir.mkdir(parents=True, exist_ok=True)
    argv = server.argv()
    argv[argv.index("--logfile") + 1] = ""  # "" = stdout
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=die_with(os.getpid()))  # fmt: skip
    if _wait_for_signal(proc):
        _let_clients_leave(server.url, proc, linger)
    if proc.poll() is None:
        proc.terminate()
    return proc.wait()


def _wait_for_signal(proc: subprocess.Popen[bytes] | None) -> bool:
    """Block until a stop signal (True) or until ``proc`` exits (False)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    while proc is None or proc.poll() is None:
        if signal.sigtimedwait(STOP_SIGNALS, 0.5) is not None:
            return True
    return False


def _let_clients_leave(url: str, proc: subprocess.Popen[bytes], linger: float) -> None:
    """Wait until the server has no client but this one, ``linger`` seconds at most, or until a
    second stop signal."""
    client = redis.Redis.from_url(url, socket_timeout=1)
    deadline = time.monotonic() + linger
    others = _others(client)
    if others:
        logger.info("stopping Redis when its %d other client(s) have left (%.0fs at most)",
                    others, linger)  # fmt: skip
    while others and time.monotonic() < deadline and proc.poll() is None:
        if signal.sigtimedwait(STOP_SIGNALS, POLL) is not None:
            return
        others = _others(client)
    client.close()


def _others(client: redis.Redis) -> int:
    try:
        return max(len(client.client_list()) - 1, 0)
    except redis.RedisError:
        return 0
