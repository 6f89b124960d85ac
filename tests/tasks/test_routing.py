"""Routing between clients (issue 20), in-process on the session Redis: which queue each task
waits in, the registry of client queues, and the per-client publishing turn. The round-robin
itself is the brokers' (tests/faults/test_neighbours.py runs it on both)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from payouts_core.resources import store_client
from payouts_core.settings import get_settings, key_digest
from payouts_tasks import routing
from payouts_tasks.batches import batch_chord
from payouts_tasks.routing import (
    BATCH_QUEUE,
    WEBHOOK_QUEUE,
    client_queues,
    known_clients,
    leave_turn,
    publishing_turn,
    register_client,
    route_task,
    take_turn,
    turn_wait_max_s,
)


def test_each_task_waits_in_its_queue():
    assert route_task("payouts.settle", ("acme", "b", 0), {}, {}) == {"queue": "payouts.settle.acme"}
    assert route_task("payouts.aggregate", ("acme", "b"), {}, {}) == {"queue": BATCH_QUEUE}
    assert route_task("payouts.publish", ("acme", "b", 3, "l"), {}, {}) == {"queue": "payouts.batches"}
    assert route_task("payouts.webhook_deliver", ("acme", "msg_1"), {}, {}) == {"queue": WEBHOOK_QUEUE}
    assert route_task("payouts.sweep", (), {}, {}) is None  # the default queue


def test_a_client_name_cannot_reach_another_queue_or_a_topic_wildcard():
    clients = ("a", "a.b", "a#", "a*", "a:b", "a%2A", "a.retry", "retry.a", "settle.a")
    names = {q for c in clients for q in client_queues(c)}
    assert len(names) == 2 * len(clients)
    assert not any(ch in n for n in names for ch in "*#:")
    assert client_queues("acme") == ("payouts.retry.acme", "payouts.settle.acme")


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


@pytest.fixture
def quick_turns(monkeypatch):
    """Turns that lapse 0.4 s after their holder's last beat, beating every 0.1 s."""
    monkeypatch.setattr(routing, "TURN_ALIVE_S", 0.4)
    monkeypatch.setattr(routing, "TURN_BEAT_S", 0.1)


def take_ticket_and_die(client: str) -> int:
    """What a publisher killed right after taking its ticket leaves behind: a live ticket that
    nobody beats."""
    return take_turn(client, live_s=0.4)


def test_batches_publish_in_the_order_they_were_accepted(uid):
    """The API takes each batch's ticket as it accepts it: a later batch whose publish task
    starts first still waits for the earlier one (seen swapped on RabbitMQ before)."""
    client, order = f"accepted{uid}", []
    first, second = take_turn(client, live_s=60), take_turn(client, live_s=60)

    def publish(ticket: int) -> None:
        with publishing_turn(client, ticket=ticket, wait_max_s=30):
            order.append(ticket)

    late = threading.Thread(target=publish, args=(second,))
    late.start()
    time.sleep(0.3)
    assert order == []  # the second waits for the first, which has not even started
    publish(first)
    late.join()
    assert order == [first, second]


def test_a_ticket_whose_batch_is_never_published_is_left(uid):
    client = f"left{uid}"
    abandoned = take_turn(client, live_s=60)
    leave_turn(client, abandoned)  # the publish message could not be sent, or was skipped
    asked = time.monotonic()
    with publishing_turn(client, wait_max_s=30):
        assert time.monotonic() - asked < 1


def test_a_dead_publishers_turn_lapses_and_the_next_goes_ahead(uid, quick_turns):
    client = f"dead{uid}"
    with publishing_turn(client):
        pass
    dead = take_ticket_and_die(client)
    asked = time.monotonic()

    with publishing_turn(client, wait_max_s=30) as ticket:
        waited = time.monotonic() - asked
    assert ticket == dead + 1
    assert 0.2 < waited < 5  # its turn lapsed (0.4 s after it was taken), not the 30 s cap
    assert int(store_client().get(f"payouts:publish-served:{client}")) == ticket


def test_a_live_publisher_is_waited_for_past_the_lapse_time(uid, quick_turns):
    """A chord that takes longer to publish than TURN_ALIVE_S keeps its turn by beating: the next
    publisher waits (a fixed 30 s limit let five 10,000-item RabbitMQ chords interleave)."""
    client, left, beats = f"slow{uid}", [], []

    def slow_publisher() -> None:
        with publishing_turn(client, keep_alive=lambda: beats.append(1)):
            time.sleep(1.5)  # ~4 lapse times
            left.append(time.monotonic())

    first = threading.Thread(target=slow_publisher)
    first.start()
    time.sleep(0.1)
    with publishing_turn(client, wait_max_s=30):
        entered = time.monotonic()
    first.join()

    assert entered >= left[0]
    assert len(beats) >= 5  # the holder's keep_alive ran at its beats (the batch kept fresh)


def test_a_turn_is_waited_for_no_longer_than_its_cap(uid, quick_turns):
    client, release = f"stuck{uid}", threading.Event()

    def stuck_publisher() -> None:
        with publishing_turn(client):
            release.wait(10)

    first = threading.Thread(target=stuck_publisher)
    first.start()
    time.sleep(0.1)
    asked = time.monotonic()
    with publishing_turn(client, wait_max_s=0.5):
        waited = time.monotonic() - asked
    release.set()
    first.join()
    assert 0.4 < waited < 5


def test_the_turn_wait_stays_inside_the_redis_visibility_timeout():
    settings = get_settings()
    on_redis = replace(settings, broker_url="redis://localhost:6379/0", visibility_timeout_s=70)
    on_rabbitmq = replace(settings, broker_url="amqp://guest:guest@localhost:5672//")

    assert turn_wait_max_s(on_redis) == 35
    assert turn_wait_max_s(on_rabbitmq) == routing.TURN_WAIT_MAX_S > 35
