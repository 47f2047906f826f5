"""Celery settings that fit long GPU jobs; the app loads these first, the user's config after.

Each value is overridable from a config module (``CELERY_AGENT_CONFIG``, see config/).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .settings import Settings

#: seconds a message may stay unacknowledged before Redis hands it to another worker. Long runs
#: outlive it; the run's claim key in Redis drops such a redelivery (and one of a run that ended),
#: so it is never run twice. Runs of a dead worker come back through the sweep, not this.
VISIBILITY_TIMEOUT = 6 * 3600
DEFAULT_PRIORITY = 3  #: a new run's message priority (Redis transport: 0 is taken first)
REQUEUE_PRIORITY = 0  #: a run sent again after its worker died or drained
#: RabbitMQ takes the highest priority first: classic queues are declared with this
#: ``x-max-priority``; quorum queues (RabbitMQ 4) treat a priority above 4 as high, the rest normal
AMQP_MAX_PRIORITY = 5
AMQP_DEFAULT_PRIORITY = 2  #: a new run's priority on RabbitMQ
AMQP_REQUEUE_PRIORITY = AMQP_MAX_PRIORITY  #: a re-queued run's: ahead of every new one
QUEUE_TYPES = ("classic", "quorum")  #: RabbitMQ queue types the ``amqp_queue_type`` setting takes
_AMQP_SCHEMES = ("amqp", "amqps", "pyamqp", "librabbitmq")


def is_amqp(broker_url: str) -> bool:
    """Whether ``broker_url`` names a RabbitMQ (AMQP) broker rather than Redis."""
    return urlsplit(broker_url).scheme in _AMQP_SCHEMES


def requeue_priority(broker_url: str) -> int:
    """The message priority of a re-queued run on ``broker_url``'s kind of broker."""
    return AMQP_REQUEUE_PRIORITY if is_amqp(broker_url) else REQUEUE_PRIORITY


#: a run's ``priority`` (-1 low, 0 normal, 1 high) as a message priority on Redis (lower first;
#: high shares level 0 with re-queues, the transport's top level) and on RabbitMQ (higher first)
REDIS_PRIORITIES = {-1: 6, 0: DEFAULT_PRIORITY, 1: REQUEUE_PRIORITY}
AMQP_PRIORITIES = {-1: 1, 0: AMQP_DEFAULT_PRIORITY, 1: 3}


def message_priority(priority: int, broker_url: str) -> int:
    """The message priority of a new run whose spec asks ``priority`` on ``broker_url``."""
    return (AMQP_PRIORITIES if is_amqp(broker_url) else REDIS_PRIORITIES)[priority]


SWEEP_TASK = "celery_agent.sweep"


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for ``settings``."""
    return _common(settings) | broker_options(settings)


def broker_options(settings: Settings) -> dict[str, Any]:
    """The settings that depend on the kind of broker (Redis or RabbitMQ)."""
    return _amqp(settings) if is_amqp(settings.broker) else _redis()


def _redis() -> dict[str, Any]:
    return {
        # Queues listed in -Q are served in that order of priority.
        "broker_transport_options": {
            "queue_order_strategy": "priority",
            "visibility_timeout": VISIBILITY_TIMEOUT,
        },
        # Runs go out at priority 3 of Redis's 0, 3, 6, 9 (lower is taken first), so a run sent
        # back to its queue (its worker died or drained) goes at REQUEUE_PRIORITY, ahead of the
        # runs that never started.
        "task_default_priority": DEFAULT_PRIORITY,
        "task_queue_max_priority": None,
        "task_default_queue_type": "classic",
        "task_create_missing_queue_type": "classic",
    }


def _amqp(settings: Settings) -> dict[str, Any]:
    """What RabbitMQ needs instead of the Redis transport's options: queues declared with the
    priorities the agent sends (classic) or as quorum queues, and publisher confirms."""
    kind = settings.amqp_queue_type
    if kind not in QUEUE_TYPES:
        raise ConfigError(
            f"setting amqp_queue_type={kind!r} is not a RabbitMQ queue type the agent uses",
            f"set CELERY_AGENT_AMQP_QUEUE_TYPE to {' or '.join(QUEUE_TYPES)}",
        )
    # (quorum queues take no x-max-priority; Celery gives them no global prefetch count)
    max_priority = AMQP_MAX_PRIORITY if kind == "classic" else None
    return {
        "task_default_queue_type": kind,  # the default queue, and queues named in -Q or a spec
        "task_create_missing_queue_type": kind,
        "task_queue_max_priority": max_priority,
        "task_default_priority": AMQP_DEFAULT_PRIORITY,
        "broker_transport_options": {"confirm_publish": True},
    }


def _common(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker,
        "result_backend": settings.backend,
        # A run is acknowledged when it ends, and a worker that dies puts it back.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One run at a time per pool slot: never reserve a GPU job behind another one.
        "worker_prefetch_multiplier": 1,
        "result_backend_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT},
        # Events for Flower and `celery events`: queued, started, done. A run's STARTED result
        # goes with its start write when the result backend is the state store's Redis (tasks.py).
        "task_track_started": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "result_expires": 7 * 86400,
        "result_extended": True,
        # JSON only: no pickle from the network.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_default_queue": "default",
        # The worker's own long-lived connection must survive Redis restarts.
        "broker_connection_retry_on_startup": True,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": False,
        # `celery -A celery_agent beat` sweeps the cluster: lost workers and runs, old records.
        # Every worker consumes the sweep queue; a sweep nobody took within an interval expires.
        "task_routes": {SWEEP_TASK: {"queue": settings.sweep_queue}},
        "beat_schedule": {
            "celery-agent-sweep": {
                "task": SWEEP_TASK,
                "schedule": settings.sweep_interval,
                "options": {"queue": settings.sweep_queue, "expires": settings.sweep_interval},
            }
        },
    }
