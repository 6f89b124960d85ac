"""One batch's chord published from a template message: what `chord.apply_async` sends, faster.

Celery's `chord.apply_async` clones, freezes and serialises one signature per header task
(~0.5 ms of CPU each: 7.4 s for a 10,000-item chord). The settle messages of one chord differ
only in their task id, their item index (args, argsrepr) and their `group_index`. So Celery builds
the first message itself (the chord body frozen as `chord.run` freezes it, the header task sent
as `group._apply_tasks` sends it, through a recorder instead of the broker), and every other
message is that one with those fields changed, published through kombu's own `Producer.publish`
in kombu 5.7's pipelined publish batches (one Redis round trip per `BATCH_SIZE` messages).

`tests/tasks/test_chord_messages.py` proves the messages and the chord counter equal, field by
field, to what `chord.apply_async` sends on the pinned Celery version (setup.cfg pins the minor
version for this reason).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from celery import Signature
from celery.backends.redis import RedisBackend
from celery.utils import uuid
from celery.utils.saferepr import saferepr

# Messages buffered before kombu flushes its pipeline; the first items can settle meanwhile.
BATCH_SIZE = 500


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
        under the cap (so nothing is truncated), the first message's text with that int swapped."""
        first = self.body[0]
        if (len(args) == len(first) and tuple(args[:-1]) == tuple(first[:-1])
                and type(args[-1]) is int and type(first[-1]) is int):
            stem, tail = self.publish_kwargs["headers"]["argsrepr"], f"{first[-1]})"
            text = stem[:-len(tail)] + f"{args[-1]})"
            if stem.endswith(tail) and len(text) < self.argsrepr_maxsize - 64:
                return text
        return saferepr(args, self.argsrepr_maxsize)


def chord_template(header: Signature, body: Signature) -> ChordTemplate:
    """Freeze the chord's body and build its first header message the way Celery's chord does."""
    app = header.app
    group_id = uuid()
    body = body.clone()
    body_id = uuid()
    body.freeze(body_id, group_id=group_id, root_id=None)  # chord.run
    first = header.clone()
    first.freeze(group_id=group_id, chord=body, root_id=None, group_index=0)  # _freeze_group_tasks
    with app.producer_or_acquire() as producer:
        recorder = _Recorder(producer.connection)
        first.apply_async(producer=recorder, add_to_parent=False, chord=body,  # _apply_tasks
                          args=(), kwargs={}, group_id=group_id)
    [(message_body, publish_kwargs)] = recorder.calls
    headers = publish_kwargs["headers"]
    return ChordTemplate(group_id, body_id, message_body, publish_kwargs,
                         root_is_self=headers["root_id"] == headers["id"],
                         argsrepr_maxsize=app.amqp.argsrepr_maxsize)


def publish_chord(task, header_args: Sequence[tuple], body: Signature, **options) -> str:
    """Publish one chord: a header of `task.si(*args).set(**options)` for each of `header_args`,
    then `body`; returns the body's task id (the chord's result id), as `chord.apply_async`."""
    if not header_args:
        raise ValueError("a chord needs at least one header task")
    app = task.app
    if not isinstance(app.backend, RedisBackend):  # the counter below is the Redis backend's
        raise TypeError("template publishing needs Celery's Redis result backend")
    template = chord_template(task.si(*header_args[0]).set(**options), body)
    # Celery sets the size just before the last message; before the first is as safe: the
    # counter only fires once every part has reported.
    app.backend.set_chord_size(template.group_id, len(header_args))
    # The first message declares the queue and retries as Celery's would; a lost connection
    # after it surfaces at a batch flush (the caller then publishes the whole chord again), so
    # the others skip kombu's per-message declare and retry wrapper (a third of the CPU, measured).
    after_first = {"declare": [], "retry": False}
    with app.producer_or_acquire() as producer, producer.batch(max_size=BATCH_SIZE):
        for group_index, args in enumerate(header_args):
            message_body, publish_kwargs = template.message(tuple(args), group_index)
            if group_index:
                publish_kwargs.update(after_first)
            producer.publish(message_body, **publish_kwargs)
    return template.body_id
