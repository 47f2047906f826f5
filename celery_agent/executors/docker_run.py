"""Supervision of one container: start it, stream its output, stop it on timeout or cancel, remove it.

The container's output (stdout and stderr, in order) is copied from the engine's log stream into a
pipe read by the same :class:`~celery_agent.logpump.LogPump` that serves local processes, so the
sink sees the same batches and the same keep-and-retry behaviour. Cancel and timeout stop the
container (TERM to its init, ``grace`` seconds, then KILL); the container is removed in any case
(after a normal end in the background, so the result does not wait for the engine).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from ..errors import RunError
from ..logpump import LogPump
from ..runner import ProcessOutcome, Status, Usage
from .base import RunRequest
from .docker_engine import docker_module, short_error

logger = logging.getLogger(__name__)

_PIPE_DRAIN = 5.0  # seconds the log stream may lag behind the container's exit
_STATS_EVERY = 2.0  # seconds between two resource samples of a running container


@dataclass
class _Stats:
    """CPU and memory use read from the engine's one-shot container stats, in its own thread: a
    stats call on a container that is exiting can block for most of a second."""

    cpu_ns: int | None = None
    max_rss: int | None = None
    samples: int = 0

    def start(self, container: Any, exited: threading.Event) -> None:
        """Sample every _STATS_EVERY seconds until ``exited`` is set (a short run is not sampled)."""
        threading.Thread(target=self._loop, args=(container, exited), daemon=True).start()

    def _loop(self, container: Any, exited: threading.Event) -> None:
        while not exited.wait(_STATS_EVERY):
            self.sample(container)

    def sample(self, container: Any) -> None:
        """Read the container's stats once; nothing when the engine cannot say."""
        try:
            raw = container.stats(stream=False, one_shot=True)
        except Exception:  # the container just ended, or an old engine
            return
        cpu = raw.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage")
        memory = raw.get("memory_stats", {})
        rss = memory.get("max_usage") or memory.get("usage")
        if cpu:
            self.cpu_ns = max(self.cpu_ns or 0, int(cpu))
        if rss:
            self.max_rss = max(self.max_rss or 0, int(rss))
        self.samples += 1

    def usage(self) -> Usage:
        cpu = None if self.cpu_ns is None else self.cpu_ns / 1e9
        return Usage(cpu_seconds=cpu, max_rss_bytes=self.max_rss, samples=self.samples)


class ContainerRun:
    """One container from creation to removal; :meth:`run` returns its outcome."""

    def __init__(self, client: Any, create: dict[str, Any], job: RunRequest) -> None:
        self.client, self.create, self.job = client, create, job
        self.exited = threading.Event()
        self.exit_code: int | None = None
        self.stats = _Stats()

    def run(self) -> ProcessOutcome:
        """Create, start and supervise the container; its removal is under way when this returns."""
        container = self._create()
        try:
            self._start(container)
            outcome = self._supervised(container)
        except BaseException:
            _remove(container)
            raise
        # removed in the background: the run's result does not wait for the engine's cleanup
        # (a worker that dies meanwhile leaves it to its successor's reaper)
        threading.Thread(target=_remove, args=(container,), daemon=True).start()
        return outcome

    def _supervised(self, container: Any) -> ProcessOutcome:
        read_fd, write_fd = os.pipe()
        try:
            pump = LogPump(read_fd, self.job.sink, _open_log(self.job), 1000, 0.1, 50,
                           self.job.scrub, last=self.job.sink_last)  # fmt: skip
        except BaseException:
            os.close(read_fd)
            os.close(write_fd)
            raise
        copier = threading.Thread(target=self._copy, args=(container, write_fd), daemon=True)
        waiter = threading.Thread(target=self._wait, args=(container,), daemon=True)
        started = time.monotonic()
        status: Status | None = None
        reason = ""
        for thread in (pump, copier, waiter):
            thread.start()
        self.stats.start(container, self.exited)
        try:
            status, reason = self._supervise(container, started)
        except BaseException:
            _remove(container)  # ends the log stream at once
            raise
        finally:
            duration = time.monotonic() - started
            copier.join(_PIPE_DRAIN)
            pump.finish(_PIPE_DRAIN)
            os.close(read_fd)
        return self._outcome(status, reason, duration, pump)

    # -- steps ------------------------------------------------------------------------------------
    def _create(self) -> Any:
        try:
            return self.client.containers.create(**self.create)
        except Exception as exc:  # APIError: a bad mount, an unknown user or network, ...
            raise RunError(
                f"cannot create the container: {short_error(exc)}", _CREATE_HINT
            ) from None

    def _start(self, container: Any) -> None:
        try:
            container.start()
        except Exception as exc:
            hint = _GPU_HINT if "gpu" in str(exc).lower() else _CREATE_HINT
            raise RunError(f"cannot start the container: {short_error(exc)}", hint) from None

    def _copy(self, container: Any, write_fd: int) -> None:
        """Copy the container's log stream into the pipe until the container ends."""
        try:
            chunks: Iterator[bytes] = container.logs(stream=True, follow=True)
            for chunk in chunks:
                _write_all(write_fd, chunk)
        except Exception as exc:  # the container was removed under the stream
            logger.debug("container log stream ended: %s", exc)
        finally:
            os.close(write_fd)

    def _wait(self, container: Any) -> None:
        try:
            self.exit_code = int(container.wait()["StatusCode"])
        except Exception as exc:  # removed while waited on
            logger.debug("waiting for the container ended: %s", exc)
        finally:
            self.exited.set()

    def _supervise(self, container: Any, started: float) -> tuple[Status | None, str]:
        job = self.job
        while not self.exited.is_set():
            now = time.monotonic()
            if job.timeout is not None and now - started >= job.timeout:
                return self._stop(container, "timed_out", f"timeout after {job.timeout:g}s")
            if _aborted(job):
                return self._stop(container, "aborted", "cancelled")
            wait = job.poll_interval
            if job.timeout is not None:
                wait = max(0.0, min(wait, started + job.timeout - now))
            self.exited.wait(wait)
        return None, ""

    def _stop(self, container: Any, status: Status, reason: str) -> tuple[Status, str]:
        logger.info("stopping container %s: %s", container.short_id, reason)
        self.stats.sample(container)
        try:
            container.stop(timeout=max(0, round(self.job.grace)))
        except Exception as exc:  # already gone
            logger.debug("stopping container %s: %s", container.short_id, exc)
        self.exited.wait(10.0)
        return status, reason

    def _outcome(
        self, status: Status | None, reason: str, duration: float, pump: LogPump
    ) -> ProcessOutcome:
        code = self.exit_code
        if status is None:
            status = "succeeded" if code == 0 else "failed"
            reason = "" if code == 0 else f"exit code {code}"
            if code is None:
                reason = "the container's exit status is unknown (the engine stopped answering)"
        return ProcessOutcome(
            status=status,
            exit_code=code,
            duration=duration,
            pid=0,
            lines=pump.lines,
            tail=list(pump.tail),
            usage=self.stats.usage(),
            reason=reason,
            first_line_at=pump.first_line_at,
        )


_CREATE_HINT = "check the docker options (volumes, user, network, shm_size, entrypoint)"
_GPU_HINT = "the engine cannot give GPUs to containers: install the NVIDIA Container Toolkit"


def _aborted(job: RunRequest) -> bool:
    if job.should_abort is None:
        return False
    try:
        return bool(job.should_abort())
    except Exception:
        logger.warning("the abort check raised; treating it as 'not aborted'", exc_info=True)
        return False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _remove(container: Any) -> None:
    errors = docker_module().errors
    try:
        container.remove(force=True)
    except errors.NotFound:
        pass
    except Exception as exc:
        logger.warning("could not remove container %s: %s", container.short_id, short_error(exc))


def _open_log(job: RunRequest) -> IO[str] | None:
    if job.log_file is None:
        return None
    try:
        job.log_file.parent.mkdir(parents=True, exist_ok=True)
        return open(job.log_file, "a", encoding="utf-8")  # noqa: SIM115 - closed by the pump
    except OSError as exc:
        raise RunError(
            f"cannot open the run's log file {job.log_file}: {exc.strerror or exc}",
            hint="check that the log folder exists and is writable by the worker",
        ) from exc
