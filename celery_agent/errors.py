"""One exception hierarchy for the whole agent.

Every class keeps its constructor arguments in ``self.args`` in order, so Celery's result backend
(which stores ``type``, ``module`` and ``args`` and rebuilds with ``cls(*args)``) and pickle both give
back an equal exception. Each error carries a message saying what went wrong and, where one exists, a
``hint`` saying how to fix it.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises on purpose."""

    #: the run stage an error belongs to, recorded on the run record ("" when not stage-bound)
    stage: str = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.args == self.args

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.args))


class ConfigError(AgentError):
    """A setting or config file is wrong."""


class SpecError(AgentError, ValueError):
    """A TaskSpec is invalid; raised at construction or submit, before anything is queued.

    ``field`` names the spec field(s) at fault ("" when the spec as a whole is).
    """

    stage = "submit"

    def __init__(self, message: str, hint: str | None = None, field: str = "") -> None:
        super().__init__(message, hint)
        self.args = (message, hint, field)
        self.field = field


class StateError(AgentError):
    """The state store (Redis) cannot be reached or holds something unexpected."""


class UnknownRunError(StateError):
    """No run with that id is recorded."""


class SourceError(AgentError):
    """The experiment's code could not be fetched, checked out or patched."""

    stage = "source"


class DiffConflictError(SourceError):
    """The spec's diff does not apply to the commit."""


class EnvBuildError(AgentError):
    """The run's environment could not be built (the installer's last lines are in the message)."""

    stage = "env"


class ExecutorUnavailable(AgentError):
    """The executor cannot run on this worker (a missing extra, no engine reachable, ...)."""

    stage = "env"


class RunError(AgentError):
    """The run's process could not be started or supervised."""

    stage = "run"


class GpuUnavailable(AgentError):
    """The run's GPU request cannot be met on this worker (never, or not within the wait)."""

    stage = "gpu"


class StageTimeout(AgentError):
    """A stage (source, env, run) took longer than its timeout (``stage`` names it when known)."""


class RunLost(AgentError):
    """The run's runner died (worker or pool process lost) and no attempt is left."""

    stage = "run"


class Cancelled(AgentError):
    """The run was cancelled while it was being prepared."""


class RequestError(AgentError, ValueError):
    """A request to the web pages or their JSON API asks for something malformed (HTTP 400)."""


ALL_ERRORS: tuple[type[AgentError], ...] = (
    AgentError,
    ConfigError,
    SpecError,
    StateError,
    UnknownRunError,
    SourceError,
    DiffConflictError,
    EnvBuildError,
    ExecutorUnavailable,
    RunError,
    GpuUnavailable,
    StageTimeout,
    Cancelled,
    RunLost,
    RequestError,
)
