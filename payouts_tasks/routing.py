"""Which queue each task waits in, so that no client's backlog holds up another (SPEC §12).

- `payouts.settle.<client>`: one queue per client for its settle messages. A worker consumes
  every client's queue, and the brokers serve them round-robin: kombu's Redis transport rotates a
  queue to the end of its BRPOP list once it delivered; RabbitMQ pushes each queue's consumer its
  own prefetch. So a new batch's items wait behind at most one message of each other busy client,
  not behind the whole backlog; within a client the queue is FIFO, so its batches keep their order.
- `payouts.batches`: the batch-level messages, publish and aggregate (one each a batch), never
  behind settle messages. The aggregate is sent when a batch's last item reports: in the client's
  queue it waited behind every item of the client's later batches (measured: five 10,000-item
  batches all completed together at the end, on both brokers).
- `payouts.webhooks`: deliveries, consumed only by the webhook worker (`payouts-worker
  --webhooks`), so a slow receiver holds a webhook greenlet, never a settlement one. Like the
  client queues it is declared where it is used (publisher, webhook worker), not by every worker.
- `celery` (the default): the sweep.

A client's queue is named in Redis (CLIENTS_KEY) by the publish task before its first chord, and
every settlement worker starts consuming it within 1-3 s (ClientQueues: a check every SYNC_S, the
queue added in the consumer's loop, which turns at least every 2 s). The clients known when a
settlement worker starts are consumed from its first message (consume_clients_from_start).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from celery import bootsteps

from payouts_core.resources import store_client
from payouts_core.rules import encode_id
from payouts_core.settings import Settings, get_settings

log = logging.getLogger(__name__)

DEFAULT_QUEUE = "celery"
BATCH_QUEUE = "payouts.batches"
WEBHOOK_QUEUE = "payouts.webhooks"
SETTLE_PREFIX = "payouts.settle."
CLIENTS_KEY = "payouts:settle-clients"
BATCH_TASKS = frozenset({"payouts.publish", "payouts.aggregate"})
# How often a settlement worker looks for a new client's queue: a client's first batch ever
# starts within this; every later batch at once (its queue is consumed already).
SYNC_S = 1.0
# A publish waits at most this long for the client's earlier publish (whose worker may have died)
# before it publishes anyway: order is kept when all goes well, never at the cost of progress.
ORDER_WAIT_S = 30.0
ORDER_KEEP_S = 24 * 3600


def settle_queue(client: str) -> str:
    """The client's queue (percent-encoded: no client name can reach another's queue, nor hold
    a topic exchange's `*` or `#`)."""
    return SETTLE_PREFIX + encode_id(client)


def route_task(name, args, kwargs, options, task=None, **_kw):
    """Celery's task_routes hook (celeryconfig.py): settle by its client (the first argument),
    publish and aggregate to the batch queue, webhook deliveries to theirs, the rest by default."""
    if name == "payouts.settle" and args:
        return {"queue": settle_queue(args[0])}
    if name in BATCH_TASKS:
        return {"queue": BATCH_QUEUE}
    if name == "payouts.webhook_deliver":
        return {"queue": WEBHOOK_QUEUE}
    return None


def configured_clients(settings: Settings) -> set[str]:
    clients = {name for name, _ in settings.api_keys}
    return clients | {"anonymous"} if settings.auth_disabled else clients


def register_client(client: str, connection: redis.Redis | None = None) -> None:
    """Make every settlement worker consume the client's queue (before its chord is published)."""
    (connection or store_client()).sadd(CLIENTS_KEY, client)


def known_clients(connection: redis.Redis | None = None, settings: Settings | None = None) -> set[str]:
    members = (connection or store_client()).smembers(CLIENTS_KEY)
    return configured_clients(settings or get_settings()) | {
        m.decode() if isinstance(m, bytes) else m for m in members}


@contextmanager
def publishing_turn(client: str, connection: redis.Redis | None = None,
                    wait_s: float = ORDER_WAIT_S) -> Iterator[int]:
    """One client's chords are published one at a time, in the order their publish tasks started
    (a ticket lock in Redis), so each chord's messages are contiguous in the client's FIFO queue
    and its batches complete in their order. Measured without it: five 10,000-item batches posted
    0.4 s apart were published concurrently, interleaved, and all completed together at the end."""
    r = connection or store_client()
    tickets, served = (f"payouts:publish-ticket:{encode_id(client)}",
                       f"payouts:publish-served:{encode_id(client)}")
    with r.pipeline(transaction=True) as pipe:
        pipe.incr(tickets)
        pipe.expire(tickets, ORDER_KEEP_S)
        pipe.expire(served, ORDER_KEEP_S)
        ticket = pipe.execute()[0]
    deadline = time.monotonic() + wait_s
    while int(r.get(served) or 0) < ticket - 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield ticket
    finally:
        _serve(r, served, ticket)


def _serve(r: redis.Redis, served: str, ticket: int) -> None:
    """served = max(served, ticket): a publish that went ahead after waiting out a dead one's turn
    is not moved back when that one ends after all."""
    with r.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(served)
                if int(pipe.get(served) or 0) >= ticket:
                    pipe.unwatch()
                    return
                pipe.multi()
                pipe.set(served, ticket, ex=ORDER_KEEP_S)
                pipe.execute()
                return
            except redis.WatchError:
                continue


def consume_clients_from_start(app, options: dict) -> None:
    """celeryd_init: a settlement worker (started without -Q) consumes every client known now
    from its first message, as its static queues: added later by ClientQueues, a batch posted in
    a worker's first seconds waited for its queue (its items idle, re-driven by the sweeper). The
    webhook worker (-Q payouts.webhooks) gets none."""
    if options.get("queues"):
        return
    try:
        clients = known_clients()
    except redis.RedisError:  # the store is down: the configured ones now, the rest by ClientQueues
        clients = configured_clients(get_settings())
    for client in sorted(clients):
        app.amqp.queues.select_add(settle_queue(client))


class ClientQueues(bootsteps.StartStopStep):
    """Consumer step of a settlement worker (one that consumes BATCH_QUEUE): consume each client
    registered after the worker started within 1-3 s (its first batch ever waits that long)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.timer_ref = None
        self.scheduled: set[str] = set()

    def start(self, c) -> None:
        if BATCH_QUEUE not in c.app.amqp.queues.consume_from:
            return  # the webhook worker, or one started for other queues only
        # Not now: until the event loop starts, the consumer has no callback, and py-amqp rejects
        # (drops) what a queue added now delivers. The first tick comes after the loop started.
        self.timer_ref = c.timer.call_repeatedly(SYNC_S, self.sync, (c,), priority=10)

    def stop(self, c) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None

    def sync(self, c) -> None:
        if c.task_consumer is None or not (c.task_consumer.on_message or c.task_consumer.callbacks):
            return  # the event loop has not started consuming yet
        try:
            clients = known_clients()
        except redis.RedisError as exc:  # the store is down: try again next tick
            log.warning("client queues not synced: %s", exc)
            return
        for client in sorted(clients):
            queue = settle_queue(client)
            if queue not in self.scheduled and not c.task_consumer.consuming_from(queue):
                # In the consumer's own loop (as Celery's add_consumer control does): the broker
                # connection belongs to it, and a second greenlet using it (py-amqp on gevent)
                # broke a basic_consume halfway, and the broker's deliveries were rejected.
                self.scheduled.add(queue)
                c.call_soon(self._consume, c, queue)

    def _consume(self, c, queue: str) -> None:
        try:
            consume(c, queue)
        except Exception:  # noqa: BLE001 - the broker refused: try again next tick
            log.exception("could not consume %s yet", queue)
        finally:
            self.scheduled.discard(queue)


def consume(c, name: str) -> None:
    """Start consuming `name`, declared as Celery declares a queue it routes to (quorum queue and
    topic exchange on RabbitMQ) and, on RabbitMQ, bound to the native delayed delivery exchange
    as Celery binds the queues it knew at start: a settle retry's countdown reaches it."""
    queue = c.app.amqp.queues[name]  # created by Celery's create-missing rules, as the publisher's
    if c.connection.transport.driver_type == "amqp" and c.app.conf.task_default_queue_type == "quorum":
        from kombu.transport.native_delayed_delivery import (
            bind_queue_to_native_delayed_delivery_exchange,
            declare_native_delayed_delivery_exchanges_and_queues,
        )
        with c.app.connection_for_write() as connection:
            # Idempotent; this step may run before Celery's DelayedDelivery step declared them.
            declare_native_delayed_delivery_exchanges_and_queues(
                connection, c.app.conf.broker_native_delayed_delivery_queue_type)
            queue(connection.default_channel).declare()
            bind_queue_to_native_delayed_delivery_exchange(connection, queue)
    c.add_task_queue(name)
