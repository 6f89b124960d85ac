"""Celery settings as plain names (Celery's documented layout), derived from the env settings.

Each reliability choice is here for a failure it guards against; docs/RELIABILITY.md lists them.
"""

from payouts_tasks.settings import get_settings

_settings = get_settings()

broker_url = _settings.broker_url
# "class+url": Celery's stock Redis backend without per-task result subscriptions (see module).
result_backend = (
    f"payouts_tasks.result_backend:PublishOnlyRedisBackend+{_settings.result_backend}"
    if _settings.result_backend.startswith(("redis://", "rediss://", "unix://"))
    else _settings.result_backend
)

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
enable_utc = True
timezone = "UTC"

# At-least-once delivery: a task is acknowledged only after it finished, and a task whose
# worker died is re-queued rather than lost. The settle task is idempotent, so a second
# delivery cannot move money twice.
task_acks_late = True
task_reject_on_worker_lost = True
task_track_started = False

# Redis redelivers an unacknowledged message after the visibility timeout; retry countdowns
# stay far below it (settings.py enforces that) so a waiting retry is never delivered twice.
broker_transport_options = {
    "visibility_timeout": _settings.visibility_timeout_s,
    # gevent runs hundreds of tasks in one process: the pool must not run out of connections.
    "max_connections": max(_settings.worker_concurrency * 2, 100),
}
result_backend_transport_options = {"visibility_timeout": _settings.visibility_timeout_s}
broker_pool_limit = max(_settings.worker_concurrency, 10)
redis_max_connections = max(_settings.worker_concurrency * 2, 100)
broker_connection_retry_on_startup = True

# One message at a time per concurrency slot: a crashed worker strands as few messages as possible.
worker_prefetch_multiplier = 1

result_expires = 7 * 24 * 3600
result_extended = False
