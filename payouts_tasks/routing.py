"""Which queue each task waits in, so that no client's backlog holds up another (SPEC §12).

- `payouts.settle.<client>`: one queue per client for its settle messages. A worker consumes
  every client's queue, and the brokers serve them round-robin: kombu's Redis transport rotates a
  queue to the end of its BRPOP list once it delivered; RabbitMQ pushes each queue's consumer its
  own prefetch. So a new batch's items wait behind at most one message of each other busy client,
  not behind the whole backlog; within a client the queue is FIFO, so its batches keep their order.
- `payouts.retry.<client>`: the client's settle retries (a transient error's backoff, an unknown
  outcome asked again, an item waiting for another's claim). In the settle queue a retry waited
  behind every message queued after its first attempt (a 10,000-item batch: up to ~30 s on top of
  its backoff, and the slowest item sets the batch's end); here it waits behind at most one
  message of each other queue, like a new client's batch.
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
import threading
import time
from collections.abc import Callable, Iterator
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
RETRY_PREFIX = "payouts.retry."
CLIENTS_KEY = "payouts:settle-clients"
BATCH_TASKS = frozenset({"payouts.publish", "payouts.aggregate"})
# How often a settlement worker looks for a new client's queue: a client's first batch ever
# starts within this; every later batch at once (its queue is consumed already).
SYNC_S = 1.0
# A client's publishing turn (publishing_turn): a publisher proves it is alive every TURN_BEAT_S;
# one silent for TURN_ALIVE_S (its process died) loses its place, so the next goes ahead.
TURN_BEAT_S = 2.0
TURN_ALIVE_S = 15.0
TURN_POLL_S = 0.05
# Past this a publish goes ahead even behind a live one (order is kept when all goes well, never
# at the cost of progress). On RabbitMQ a message may stay unacknowledged for 30 min (its default
# consumer_timeout); on Redis the broker redelivers it after the visibility timeout, so the wait
# stays well inside that.
TURN_WAIT_MAX_S = 300.0
ORDER_KEEP_S = 24 * 3600


def settle_queue(client: str) -> str:
    """The client's queue (percent-encoded: no client name can reach another's queue, nor hold
    a topic exchange's `*` or `#`)."""
    return SETTLE_PREFIX + encode_id(client)


def turn_wait_max_s(settings: Settings) -> float:
    """How long a publish may wait for its turn: on a Redis broker well inside the visibility
    timeout (a publish still running then is delivered again), on RabbitMQ TURN_WAIT_MAX_S."""
    if settings.broker_is_rabbitmq:
        return TURN_WAIT_MAX_S
    return min(TURN_WAIT_MAX_S, settings.visibility_timeout_s / 2)


def retry_queue(client: str) -> str:
    """The client's retry queue (its own prefix: no client name reaches another's queue)."""
    return RETRY_PREFIX + encode_id(client)


def client_queues(client: str) -> tuple[str, str]:
    """The queues a settlement worker consumes for a client: retries first (see ClientQueues)."""
    return retry_queue(client), settle_queue(client)


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


# The turn's keys: tickets (a counter), served (the highest ticket done), live (ticket -> the time
# it lapses, in Redis's clock, so workers' clocks need not agree). Scripts, so that a ticket is
# live from the moment it is taken and a check sees one consistent state.
_NOW = "local now = redis.call('TIME')\nlocal now_ms = now[1] * 1000 + math.floor(now[2] / 1000)\n"
_TAKE = _NOW + """
local t = redis.call('INCR', KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[1]), t)
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, ARGV[2]) end
return t
"""
_BEAT = _NOW + "return redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])"
_MAY_GO = _NOW + """
local t = tonumber(ARGV[1])
local served = tonumber(redis.call('GET', KEYS[1]) or '0')
if served >= t - 1 then return 1 end
for _, earlier in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], now_ms, '+inf')) do
  earlier = tonumber(earlier)
  if earlier > served and earlier < t then return 0 end
end
return 1
"""
_LEAVE = """
redis.call('ZREM', KEYS[2], ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
"""


def _turn_keys(client: str) -> tuple[str, str, str]:
    """tickets, served, live (see the scripts above)."""
    name = encode_id(client)
    return (f"payouts:publish-ticket:{name}", f"payouts:publish-served:{name}",
            f"payouts:publish-live:{name}")


def take_turn(client: str, connection: redis.Redis | None = None,
              live_s: float = TURN_ALIVE_S) -> int:
    """The client's next ticket, live for `live_s` unless its holder beats: the API takes it as
    it accepts a batch (live for the publishing lease, while the publish message waits), so the
    client's batches publish in the order they were accepted, not in the order their publish
    tasks happened to start (seen: two of five back-to-back batches swapped on RabbitMQ)."""
    tickets, _, live = _turn_keys(client)
    return int((connection or store_client()).eval(_TAKE, 2, tickets, live, int(live_s * 1000),
                                                   ORDER_KEEP_S))


def leave_turn(client: str, ticket: int, connection: redis.Redis | None = None) -> None:
    """Done with the ticket (published, or never will be): served = max(served, ticket)."""
    _, served, live = _turn_keys(client)
    (connection or store_client()).eval(_LEAVE, 2, served, live, ticket, ORDER_KEEP_S)


@contextmanager
def publishing_turn(client: str, connection: redis.Redis | None = None,
                    wait_max_s: float = TURN_WAIT_MAX_S, ticket: int | None = None,
                    keep_alive: Callable[[], None] | None = None) -> Iterator[int]:
    """One client's chords are published one at a time, in ticket order (`ticket`: the one its
    batch got when accepted; else a new one), so each chord's messages are contiguous in the
    client's FIFO queue and its batches start in their order. Measured without it: five
    10,000-item batches posted 0.4 s apart were published concurrently, interleaved, and all
    completed together at the end.

    A publisher waits as long as an earlier ticket is live (its holder beats every TURN_BEAT_S
    while it waits or publishes: a RabbitMQ chord of 10,000 takes ~2 s of CPU, longer on a busy
    worker, so five back to back outwaited a fixed 30 s limit and interleaved), and no longer than
    `wait_max_s`. `keep_alive` runs at each beat (the publish task keeps its batch fresh, so the
    sweeper does not re-drive a batch that is only waiting its turn)."""
    r = connection or store_client()
    _, served, live = _turn_keys(client)
    if ticket is None:
        ticket = take_turn(client, r)
    beating = threading.Event()
    beat = threading.Thread(target=_beat, args=(r, live, ticket, beating, keep_alive),
                            name=f"publishing-turn-{ticket}", daemon=True)
    r.eval(_BEAT, 1, live, ticket, int(TURN_ALIVE_S * 1000))  # live while it waits from now on
    beat.start()
    try:
        deadline = time.monotonic() + wait_max_s
        may_go = r.register_script(_MAY_GO)  # polled every TURN_POLL_S: by its SHA, not its text
        while not may_go(keys=[served, live], args=[ticket]) and time.monotonic() < deadline:
            time.sleep(TURN_POLL_S)
        yield ticket
    finally:
        beating.set()
        beat.join()  # no beat after leaving: it would make the ticket live and touch the batch again
        leave_turn(client, ticket, r)


def _beat(r: redis.Redis, live: str, ticket: int, stop: threading.Event,
          keep_alive: Callable[[], None] | None) -> None:
    """Keep a ticket live until its holder leaves (a greenlet in a gevent worker)."""
    while not stop.wait(TURN_BEAT_S):
        try:
            r.eval(_BEAT, 1, live, ticket, int(TURN_ALIVE_S * 1000))
            if keep_alive is not None:
                keep_alive()
        except redis.RedisError as exc:  # the next beat tries again; a lapse costs order only
            log.warning("publishing turn not renewed: %s", exc)


def consume_clients_from_start(app, options: dict) -> None:
    """celeryd_init: a settlement worker (started without -Q) consumes every client known now
    from its first message, as its static queues: added later by ClientQueues, a batch posted in
    a worker's first seconds waited for its queue (its items idle, re-driven by the sweeper). The
    webhook worker (-Q payouts.webhooks) gets none.

    Each queue is declared as Celery creates one it routes to (`queues[name]`: a quorum queue on
    RabbitMQ), as ClientQueues and publishers declare it. Added by name it was a classic queue,
    and RabbitMQ refuses a second declaration of another type (PRECONDITION_FAILED): a worker
    restarted after a client first posted could not consume at all."""
    if options.get("queues"):
        return
    try:
        clients = known_clients()
    except redis.RedisError:  # the store is down: the configured ones now, the rest by ClientQueues
        clients = configured_clients(get_settings())
    for client in sorted(clients):
        for queue in client_queues(client):
            app.amqp.queues.select_add(app.amqp.queues[queue])


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
            # The retry queue before the settle queue: a retry is published by a settle this
            # worker ran, and RabbitMQ drops a message for a queue nobody declared yet.
            for queue in client_queues(client):
                if queue not in self.scheduled and not c.task_consumer.consuming_from(queue):
                    # In the consumer's own loop (as Celery's add_consumer control does): the
                    # broker connection belongs to it, and a second greenlet using it (py-amqp on
                    # gevent) broke a basic_consume halfway, and the broker's deliveries were
                    # rejected.
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
