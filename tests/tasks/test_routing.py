"""Routing between clients (issue 20), in-process on the session Redis: which queue each task
waits in, the registry of client queues, and the per-client publishing turn. The round-robin
itself is the brokers' (tests/faults/test_neighbours.py runs it on both)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from payouts_core.resources import store_client
from payouts_core.settings import get_settings, key_digest
from payouts_tasks.batches import batch_chord
from payouts_tasks.routing import (
    BATCH_QUEUE,
    WEBHOOK_QUEUE,
    known_clients,
    publishing_turn,
    register_client,
    route_task,
    settle_queue,
)


def test_each_task_waits_in_its_queue():
    assert route_task("payouts.settle", ("acme", "b", 0), {}, {}) == {"queue": "payouts.settle.acme"}
    assert route_task("payouts.aggregate", ("acme", "b"), {}, {}) == {"queue": BATCH_QUEUE}
    assert route_task("payouts.publish", ("acme", "b", 3, "l"), {}, {}) == {"queue": "payouts.batches"}
    assert route_task("payouts.webhook_deliver", ("acme", "msg_1"), {}, {}) == {"queue": WEBHOOK_QUEUE}
    assert route_task("payouts.sweep", (), {}, {}) is None  # the default queue


def test_a_client_name_cannot_reach_another_queue_or_a_topic_wildcard():
    names = {settle_queue(c) for c in ("a", "a.b", "a#", "a*", "a:b", "a%2A")}
    assert len(names) == 6
    assert not any(ch in n for n in names for ch in "*#:")


def test_celery_routes_a_chord_to_its_clients_queue():
    from payouts_core.store import BatchRef
    from payouts_tasks import app

    header = batch_chord(BatchRef("acme", "b"), [0]).tasks[0]
    route = app.amqp.router.route({}, header.task, header.args, header.kwargs)
    assert route["queue"].name == "payouts.settle.acme"


def test_known_clients_are_the_configured_and_the_registered(uid):
    settings = replace(get_settings(), api_keys=(("conf" + uid, key_digest("k" * 20)),))
    register_client("reg" + uid)

    assert {"conf" + uid, "reg" + uid} <= known_clients(store_client(), settings)


def test_one_clients_publishes_take_turns_in_ticket_order(uid):
    entered, left = [], []

    def publish(n: int, hold: float) -> None:
        with publishing_turn(f"turns{uid}") as ticket:
            entered.append((n, ticket, time.monotonic()))
            time.sleep(hold)
            left.append((n, time.monotonic()))

    first = threading.Thread(target=publish, args=(1, 0.5))
    first.start()
    time.sleep(0.1)
    second = threading.Thread(target=publish, args=(2, 0))
    second.start()
    with publishing_turn(f"other{uid}"):  # another client never waits for this one
        assert len(entered) == 1
    first.join()
    second.join()

    assert [n for n, _, _ in entered] == [1, 2]
    assert entered[1][2] >= left[0][1]  # the second entered only once the first had left


def test_a_turn_held_by_a_dead_publisher_is_waited_out(uid):
    client = f"dead{uid}"
    with publishing_turn(client, wait_s=0):
        pass
    r = store_client()
    r.incr(f"payouts:publish-ticket:{client}")  # a publisher that took its ticket and died

    with publishing_turn(client, wait_s=0.3) as ticket:  # goes ahead once the wait is over
        assert ticket == 3
    assert int(r.get(f"payouts:publish-served:{client}")) == 3  # the dead one's turn passed on
