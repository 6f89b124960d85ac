"""Celery settings as plain names (Celery's documented layout), derived from the env settings.

Each reliability choice is here for a failure it guards against; docs/RELIABILITY.md lists them.
"""

from kombu import Exchange, Queue

from payouts_core.settings import get_settings, webhook_time_limit_s
from payouts_tasks.routing import BATCH_QUEUE, DEFAULT_QUEUE

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

# The broker is chosen by CELERY_BROKER_URL's scheme: Redis by default (nothing else to install),
# RabbitMQ in production (README "Running on RabbitMQ"). Redis stays the result backend either way.
_on_rabbitmq = _settings.broker_is_rabbitmq

if _on_rabbitmq:
    # Quorum queues: replicated across a cluster, and unacked messages of a closed connection (a
    # SIGKILLed worker) are requeued at once: every item final 11.8 s after the second of two
    # kills of a 1,000-item batch; on Redis 99 % took 72.7 s and one lost message waited for the
    # sweeper, 197.7 s (docs/RELIABILITY.md, "Bounded redelivery").
    task_default_queue_type = "quorum"
    # Native delayed delivery (Celery 5.5+) routes countdown retries through celery_delayed_*
    # topic exchanges; the default direct exchange would hold them in the worker instead. Delays
    # are whole seconds; settle rounds a shorter countdown up to 1 s (payouts_tasks/celery_app.py).
    task_default_exchange_type = "topic"
    broker_transport_options = {
        # Publisher confirms: a 202 (its publish message) and every chord message are in the
        # broker, on a quorum majority, before publish returns.
        "confirm_publish": True,
    }
    # A consumer is pushed messages up to its prefetch (no BRPOP polling as on Redis), and quorum
    # queues make the prefetch static: one message per greenlet keeps a batch spread over every
    # worker, and a dead worker holds no more than its concurrency (requeued at once anyway).
    worker_prefetch_multiplier = 1
    # No AMQP heartbeats: with them, Celery 5.7's green-pool loop drains its event connection with
    # a 0.1 s timeout once per delivered message (loops._quick_drain), which capped a gevent
    # worker at 10 settles/s (measured: 300 items in 30 s; 300 in 5 s without). A killed worker's
    # socket is closed by its kernel, so RabbitMQ requeues at once; a vanished worker host is found
    # by the broker's TCP keepalive (enabled in docker-compose.yml) or its consumer_timeout.
    broker_heartbeat = 0
else:
    # Redis redelivers an unacknowledged message after the visibility timeout (70 s by default,
    # chosen with the time limit and backoff ceiling in settings.py); retry countdowns and task
    # runs fit below it, so a waiting retry is never delivered twice.
    broker_transport_options = {
        "visibility_timeout": _settings.visibility_timeout_s,
        # Look for messages of dead workers every 2 s (kombu's default is ~100 s).
        "unacked_restore_interval": 2,
        "unacked_restore_throttle": 1,
        # gevent runs hundreds of tasks in one process: the pool must not run out of connections.
        "max_connections": max(_settings.worker_concurrency * 2, 100),
    }
    # kombu's transport restores a dead worker's messages in a gevent worker only with this
    # subclass (see its module). Not for rediss:// or sentinel URLs, which keep kombu's own.
    if _settings.broker_url.startswith("redis://"):
        broker_transport = "payouts_tasks.redis_transport:Transport"
    # Prefetch 4 per slot: with 1, kombu stops BRPOP whenever the worker holds `concurrency`
    # messages and Celery's green-pool loop then sleeps up to 2 s (measured: on average 67 of 200
    # greenlets busy). A message waits behind at most 3 others of its slot before it runs.
    worker_prefetch_multiplier = 4

# Fair time between clients (SPEC §12, payouts_tasks/routing.py): settle messages wait in their
# client's own queue, publish and aggregate messages in the batch queue, webhook deliveries in
# theirs. Every worker consumes the two static queues below (and, through routing.ClientQueues,
# every client's); the webhooks queue and the client queues are created where they are used, by
# Celery's create-missing rules, declared alike on either broker (quorum queue, topic exchange on RabbitMQ).
# Only the webhook worker (`payouts-worker --webhooks`) consumes the webhooks queue: declared by
# every worker, RabbitMQ's delayed-delivery binding failed on workers that exclude it.
task_routes = ("payouts_tasks.routing.route_task",)
if _on_rabbitmq:
    task_create_missing_queue_type = "quorum"
    task_create_missing_queue_exchange_type = "topic"
    task_queues = [Queue(name, Exchange(name, type="topic"), routing_key=name,
                         queue_arguments={"x-queue-type": "quorum"})
                   for name in (DEFAULT_QUEUE, BATCH_QUEUE)]
else:
    task_queues = [Queue(name, Exchange(name), routing_key=name) for name in (DEFAULT_QUEUE, BATCH_QUEUE)]

result_backend_transport_options = {"visibility_timeout": _settings.visibility_timeout_s}
broker_pool_limit = max(_settings.worker_concurrency, 10)
redis_max_connections = max(_settings.worker_concurrency * 2, 100)
broker_connection_retry_on_startup = True

# The one place the worker's concurrency is set (WORKER_CONCURRENCY): the connection limits
# above are derived from the same number. The pool (gevent) stays on the command line, where
# Celery applies its monkey patches early enough.
worker_concurrency = _settings.worker_concurrency

# Chord counting and results go through the backend: ride out a Redis restart instead of
# failing the chord. (The sweeper completes a chord whose callback was lost anyway.)
result_backend_always_retry = True
# One backend for all greenlets: Celery's per-thread backend is per-greenlet under gevent, which
# built a backend, a pool and a connection for every task (measured: ~30 % of worker CPU).
result_backend_thread_safe = True
result_backend_max_retries = 30

# The provider's own deadline answers first (AB03); the hard limit is the backstop for a call
# that hangs. A settle killed by it is re-driven by the sweeper, which settles it from the
# provider's ledger once its attempts are used up.
# A webhook attempt ends at its own wall-clock deadline (PAYOUTS_WEBHOOK_TIMEOUT_S); the time limit
# is the backstop, and the attempt's lease outlives both (settings.webhook_lease_s).
task_annotations = {
    "payouts.settle": {"time_limit": _settings.settle_time_limit_s},
    "payouts.webhook_deliver": {"time_limit": webhook_time_limit_s(_settings.webhook_timeout_s)},
}

beat_schedule = {
    "sweep-unfinished-batches": {"task": "payouts.sweep", "schedule": float(_settings.sweep_interval_s)},
}

result_expires = 7 * 24 * 3600
