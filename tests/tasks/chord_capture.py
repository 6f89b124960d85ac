"""Run in a subprocess by test_chord_messages.py: publish one batch's chord twice on a broker no
worker consumes, once with Celery's `chord.apply_async` and once from the template, and print
both as JSON (every message as kombu reads it back, and the chord counter keys).

`python -m tests.tasks.chord_capture CLIENT BATCH_ID N [--in-task]`; REDIS_URL (and
CELERY_BROKER_URL for RabbitMQ) come from the environment, as in production. With `--gevent`
instead: patched as a gevent worker is, the template publish only, and at how many points of it
another greenlet ran.
"""

from __future__ import annotations

import json
import sys

import redis


def drain(app, name: str) -> list[dict]:
    """Every message of queue `name` (the client's settle queue, where both publishes must put
    the header), in publish order, as a worker would decode it."""
    messages = []
    with app.connection_for_read() as conn:
        queue = app.amqp.queues[name](conn.default_channel)
        queue.declare()  # as the first publish would (a new RabbitMQ vhost has none)
        while (message := queue.get(no_ack=True)) is not None:
            properties = dict(message.properties)
            properties.pop("delivery_tag", None)  # the transport's own, per delivery
            messages.append({"headers": message.headers, "properties": properties,
                             "content_type": message.content_type,
                             "content_encoding": message.content_encoding,
                             "body": json.loads(message.body)})
    return messages


def chord_keys(backend_url: str) -> dict:
    """The chord counter keys the publish left: suffix -> (value, has a TTL)."""
    r = redis.Redis.from_url(backend_url, decode_responses=True)
    found = {}
    for key in r.scan_iter("celery-taskset-meta-*"):
        found[key.rsplit(".", 1)[-1]] = (r.get(key), r.ttl(key) > 0)
        r.delete(key)
    return found


def main(client: str, batch_id: str, total: int, in_task: bool) -> None:
    from celery._state import _task_stack

    from payouts_core.settings import get_settings
    from payouts_core.store import BatchRef
    from payouts_tasks.batches import batch_chord, publish, publish_items
    from payouts_tasks.routing import settle_queue

    app = publish.app
    ref = BatchRef(client, batch_id)
    if in_task:  # as inside the worker's payouts.publish task: parent and root ids set
        _task_stack.push(publish)
        publish.push_request(id="publish-task-id", root_id="root-task-id", called_directly=False)
    queue = settle_queue(client)
    drain(app, queue)
    out = {}
    out["celery_result"] = batch_chord(ref, range(total)).apply_async().id
    out["celery"], out["celery_keys"] = drain(app, queue), chord_keys(get_settings().result_backend)
    out["template_result"] = publish_items(ref, range(total))
    out["template"], out["template_keys"] = drain(app, queue), chord_keys(get_settings().result_backend)
    json.dump(out, sys.stdout)


def points_where_others_ran(client: str, batch_id: str, total: int) -> dict:
    """The number of distinct publish counts (messages sent so far) at which a ticker greenlet
    ran while one chord was published: how often the publisher let a worker's other greenlets
    (settle tasks, the turn's beat) run, counted without timing anything."""
    import gevent
    from kombu import Producer

    from payouts_core.store import BatchRef
    from payouts_tasks.batches import publish_items

    sent, seen, done = [0], set(), [False]
    publish = Producer.publish

    def counting(self, *args, **kwargs):
        sent[0] += 1
        return publish(self, *args, **kwargs)

    def ticker() -> None:
        while not done[0]:
            seen.add(sent[0])
            gevent.sleep(0)

    Producer.publish = counting
    others = gevent.spawn(ticker)
    gevent.sleep(0)
    publish_items(BatchRef(client, batch_id), range(total))
    done[0] = True
    others.join()
    return {"sent": sent[0], "points": len(seen - {0, sent[0]})}


if __name__ == "__main__":
    if "--gevent" in sys.argv[4:]:
        from gevent import monkey

        monkey.patch_all()
        json.dump(points_where_others_ran(sys.argv[1], sys.argv[2], int(sys.argv[3])), sys.stdout)
    else:
        main(sys.argv[1], sys.argv[2], int(sys.argv[3]), "--in-task" in sys.argv[4:])
