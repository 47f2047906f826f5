"""An example Celery config module for celery-agent.

Copy it, edit it, and point the agent at it:

    export CELERY_AGENT_CONFIG=myconfig          # a module importable from the current directory
    celery -A celery_agent worker -Q gpu0

Anything set here overrides the defaults in celery_agent/defaults.py. Lowercase Celery setting names.
"""

# Broker and results in one Redis (CELERY_AGENT_REDIS_URL does the same from the environment).
broker_url = "redis://localhost:6379/0"
result_backend = "redis://localhost:6379/0"

# How long finished results stay in Redis (seconds).
result_expires = 14 * 86400

# Seconds an unacknowledged run waits before Redis redelivers it. A redelivery of a run that is
# still running (its claim is held) or that already ended is dropped, so a short timeout never runs
# a job twice. A run whose worker died comes back sooner through the beat sweep (claim expired ->
# requeued with the same run id, up to the spec's max_attempts).
broker_transport_options = {"queue_order_strategy": "priority", "visibility_timeout": 6 * 3600}

# Sign messages (needs `pip install celery[auth]` and keys): see Celery's security guide.
# security_key = "/etc/celery-agent/worker.key"
# security_certificate = "/etc/celery-agent/worker.pem"
# security_cert_store = "/etc/celery-agent/certs/*.pem"
# task_serializer = "auth"
