"""One batch's chord published from a template message: what `chord.apply_async` sends, faster.

Celery's `chord.apply_async` clones, freezes and serialises one signature per header task
(~0.5 ms of CPU each: 7.4 s for a 10,000-item chord). The settle messages of one chord differ
only in their task id, their item index (args, argsrepr) and their `group_index`. So Celery builds
the first message itself (the chord body frozen as `chord.run` freezes it, the header task sent
as `group._apply_tasks` sends it, through a recorder instead of the broker), and every other
message is that one with those fields changed, published through kombu's own `Producer.publish`:
on Redis in kombu 5.7's pipelined publish batches (one round trip per `BATCH_SIZE` messages), on
RabbitMQ with the publisher confirms of the whole chord awaited together (`PublisherConfirms`).

`tests/tasks/test_chord_messages.py` proves the messages and the chord counter equal, field by
field, to what `chord.apply_async` sends on the pinned Celery version (setup.cfg pins the minor
version for this reason).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from celery import Signature
from celery.backends.redis import RedisBackend
from celery.utils import uuid
from celery.utils.saferepr import saferepr
from kombu import Producer
from kombu.exceptions import OperationalError

# Messages buffered before kombu flushes its pipeline; the first items can settle meanwhile.
BATCH_SIZE = 500
# Messages published between two yields to a gevent worker's other greenlets.
YIELD_EVERY = 50
# RabbitMQ: how long the publisher waits for the broker to confirm a whole chord.
CONFIRM_TIMEOUT_S = 60.0


class _Recorder:
    """Stands in for a kombu Producer: keeps what Celery would publish instead of sending it."""

    def __init__(self, connection):
        self.connection = connection
        self.calls: list[tuple[tuple, dict]] = []

    def publish(self, body, **kwargs):
        self.calls.append((body, kwargs))


@dataclass(frozen=True)
class ChordTemplate:
    """The first header message as Celery built it, and how to derive the others from it."""

    group_id: str
    body_id: str
    body: tuple  # (args, kwargs, embed) of the first header task
    publish_kwargs: dict  # headers, properties and routing, as Celery passes them to kombu
    root_is_self: bool  # no parent task: Celery makes each message its own root
    argsrepr_maxsize: int

    def message(self, args: tuple, group_index: int) -> tuple[tuple, dict]:
        """The (body, publish kwargs) of the header task `args` at `group_index` in the chord."""
        task_id = uuid()
        headers = dict(self.publish_kwargs["headers"], id=task_id, group_index=group_index,
                       argsrepr=self.argsrepr(args))
        if self.root_is_self:
            headers["root_id"] = task_id
        return (list(args), *self.body[1:]), dict(self.publish_kwargs, headers=headers,
                                                  correlation_id=task_id)

    def argsrepr(self, args: tuple) -> str:
        """Celery's `saferepr(args)`; when only a trailing int changes and the text stays well
        under the cap (so nothing is truncated), the first message's text with that int swapped
        (saferepr per message was ~15 % of publishing a 10,000-message chord, profiled)."""
        first = self.body[0]
        if (len(args) == len(first) and tuple(args[:-1]) == tuple(first[:-1])
                and type(args[-1]) is int and type(first[-1]) is int):
            stem, tail = self.publish_kwargs["headers"]["argsrepr"], f"{first[-1]})"
            text = stem[:-len(tail)] + f"{args[-1]})"
            if stem.endswith(tail) and len(text) < self.argsrepr_maxsize - 64:
                return text
        return saferepr(args, self.argsrepr_maxsize)


def chord_template(header: Signature, body: Signature, connection) -> ChordTemplate:
    """Freeze the chord's body and build its first header message the way Celery's chord does
    (`connection`: the broker connection the messages will go through)."""
    app = header.app
    group_id = uuid()
    body = body.clone()
    body_id = uuid()
    body.freeze(body_id, group_id=group_id, root_id=None)  # chord.run
    first = header.clone()
    first.freeze(group_id=group_id, chord=body, root_id=None, group_index=0)  # _freeze_group_tasks
    recorder = _Recorder(connection)
    first.apply_async(producer=recorder, add_to_parent=False, chord=body,  # _apply_tasks
                      args=(), kwargs={}, group_id=group_id)
    [(message_body, publish_kwargs)] = recorder.calls
    headers = publish_kwargs["headers"]
    return ChordTemplate(group_id, body_id, message_body, publish_kwargs,
                         root_is_self=headers["root_id"] == headers["id"],
                         argsrepr_maxsize=app.amqp.argsrepr_maxsize)


@contextmanager
def _publishing(app) -> Iterator[Producer]:
    """A producer for one chord's messages; leaving the block means the broker holds them all.

    Redis: kombu's pipelined publish batch. RabbitMQ with publisher confirms: a channel of its
    own whose confirms are awaited together at the end instead of one by one (3.3 ms each,
    measured: a 10,000-item chord took ~30 s to publish).
    """
    with app.producer_or_acquire() as pooled:
        connection = pooled.connection
        if not (connection.transport.driver_type == "amqp"
                and connection.transport_options.get("confirm_publish")):
            with pooled.batch(max_size=BATCH_SIZE):
                yield pooled
            return
        # The pool may hand back a connection closed by a broker restart (its `connection` is
        # then None, and channel() an AttributeError): reconnect, or raise OperationalError so
        # the publish task retries (seen: a RabbitMQ restart left a batch opened, unpublished).
        if not connection.connected:
            connection.ensure_connection(max_retries=3)
        channel = connection.channel()
        try:
            confirms = PublisherConfirms(channel)
            yield Producer(channel, auto_declare=False)
            confirms.wait(CONFIRM_TIMEOUT_S)
        finally:
            with suppress(Exception):  # a broken channel: the error above says why
                channel.close()


class PublisherConfirms:
    """Publisher confirms of one py-amqp channel, awaited for every message at once.

    The channel is put in confirm mode here, so delivery tags count this channel's messages from
    1; the broker acks each (or every tag up to one, `multiple`) once it holds it durably.
    """

    def __init__(self, channel):
        self.channel = channel
        self.sent = self.confirmed = self.upto = 0
        self.singles: set[int] = set()
        self.refused = 0
        channel.confirm_select()
        channel._confirm_selected = True
        raw_publish = channel._basic_publish

        def publish_without_waiting(*args, **kwargs):
            kwargs.pop("confirm_timeout", None)
            sent = raw_publish(*args, **kwargs)
            self.sent += 1  # only a message the socket took is awaited (a failed send raised)
            return sent

        channel.basic_publish = publish_without_waiting  # instead of py-amqp's wait per message
        channel.events["basic_ack"].add(self._acked)
        channel.events["basic_nack"].add(self._refused)

    def _acked(self, tag: int, multiple: bool) -> None:
        if not multiple:
            if tag > self.upto and tag not in self.singles:
                self.singles.add(tag)
                self.confirmed += 1
            return
        if tag <= self.upto:
            return
        below = {t for t in self.singles if t <= tag}
        self.singles -= below
        self.confirmed += (tag - self.upto) - len(below)
        self.upto = tag

    def _refused(self, tag: int, multiple: bool) -> None:
        self.refused += 1

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.confirmed < self.sent and not self.refused:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OperationalError(f"{self.sent - self.confirmed} of {self.sent} chord messages "
                                       f"unconfirmed after {timeout:g} s")
            with suppress(socket.timeout):
                self.channel.connection.drain_events(timeout=min(remaining, 1.0))
        if self.refused:
            raise OperationalError("the broker refused (nacked) chord messages")


def publish_chord(task, header_args: Sequence[tuple], body: Signature, **options) -> str:
    """Publish one chord: a header of `task.si(*args).set(**options)` for each of `header_args`,
    then `body`; returns the body's task id (the chord's result id), as `chord.apply_async`."""
    if not header_args:
        raise ValueError("a chord needs at least one header task")
    app = task.app
    if not isinstance(app.backend, RedisBackend):  # the counter below is the Redis backend's
        raise TypeError("template publishing needs Celery's Redis result backend")
    # The first message declares the queue and retries as Celery's would; a lost connection
    # after it surfaces at a batch flush (the caller then publishes the whole chord again), so
    # the others skip kombu's per-message declare and retry wrapper (a third of the CPU, measured).
    after_first = {"declare": [], "retry": False}
    with _publishing(app) as producer:
        template = chord_template(task.si(*header_args[0]).set(**options), body, producer.connection)
        # Celery sets the size just before the last message; before the first is as safe: the
        # counter only fires once every part has reported.
        app.backend.set_chord_size(template.group_id, len(header_args))
        for group_index, args in enumerate(header_args):
            message_body, publish_kwargs = template.message(tuple(args), group_index)
            if group_index:
                publish_kwargs.update(after_first)
            producer.publish(message_body, **publish_kwargs)
            if group_index % YIELD_EVERY == YIELD_EVERY - 1:
                # Let a gevent worker's other greenlets run (settle tasks, the publishing turn's
                # beat): a 10,000-message chord is ~2 s of CPU on RabbitMQ, ~0.4 s on Redis.
                time.sleep(0)
    return template.body_id
