"""An example Celery config module for celery-agent.

Copy it, edit it, and point the agent at it:

    export CELERY_AGENT_CONFIG=myconfig          # a module importable from the current directory
    celery -A celery_agent worker -Q gpu0

Anything set here overrides the defaults in celery_agent/defaults.py. Lowercase Celery setting names.
"""

# Broker and results in one Redis (CELERY_AGENT_REDIS_URL does the same from the environment).
broker_url = "redis://localhost:6379/0"
result_backend = "redis://localhost:6379/0"

# Password, TLS and Sentinel. CELERY_AGENT_REDIS_URL takes any of these for the store, the broker
# and the backend at once, and the app adds the Celery settings below by itself:
#   redis://:PASSWORD@redis.internal:6379/0
#   rediss://:PASSWORD@redis.internal:6380/0?ssl_ca_certs=/etc/redis/ca.pem   (TLS)
#   sentinel://:PASSWORD@s1:26379;sentinel://s2:26379/0?master_name=mymaster (Sentinel)
# The same URLs work for broker_url / result_backend here (the app splits their options out for
# Celery); what that amounts to in Celery's own terms:
# import ssl
# broker_url = result_backend = "rediss://:PASSWORD@redis.internal:6380/0"
# broker_use_ssl = redis_backend_use_ssl = {
#     "ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/redis/ca.pem"}
# broker_url = result_backend = "sentinel://:PASSWORD@s1:26379/0;sentinel://:PASSWORD@s2:26379/0"
# result_backend_transport_options = {"master_name": "mymaster"}
# (and "master_name": "mymaster" in broker_transport_options below)

# How long finished results stay in Redis (seconds).
result_expires = 14 * 86400

# Seconds an unacknowledged run waits before Redis redelivers it. A redelivery of a run that is
# still running (its claim is held) or that already ended is dropped, so a short timeout never runs
# a job twice. A run whose worker died comes back sooner through the beat sweep (claim expired ->
# requeued with the same run id, up to the spec's max_attempts).
broker_transport_options = {"queue_order_strategy": "priority", "visibility_timeout": 6 * 3600}

# Sign messages: every task message is signed with this machine's key, and a worker refuses any
# message not signed by a certificate in its store (an unsigned one is logged as "Received invalid
# task message: Refusing to deserialize untrusted content" and discarded, so it never runs). Needs
# `pip install celery-agent[auth]` (the cryptography package), a key and certificate on every
# machine that submits or runs (workers, beat, the CLI, Flower), and all five lines below: Celery
# signs only when task_serializer is "auth" and accept_content is exactly ["auth"]. Results stay
# JSON. A key and self-signed certificate for a test:
#   openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj /CN=celery-agent \
#       -keyout worker.key -out worker.pem
# security_key = "/etc/celery-agent/worker.key"
# security_certificate = "/etc/celery-agent/worker.pem"
# security_cert_store = "/etc/celery-agent/certs/*.pem"
# task_serializer = "auth"
# accept_content = ["auth"]
