"""Issue 20 with real processes on both brokers: one client's backlog does not hold up another
client's new batch, a client's batches complete in their order, and exactly once still holds
when a worker is SIGKILLed while two clients' queues are being served."""

from __future__ import annotations

import signal
import threading
import time

import requests

from payouts_tasks.routing import publishing_turn
from tests.conftest import OTHER_KEY, wait_for
from tests.faults.stack import BROKERS, CLIENT, items

SLOW = {"PIX_SIM_LATENCY_MS": "150-250", "WORKER_CONCURRENCY": "20"}  # ~100 items/s


def post_as_other(stack, batch_id: str, count: int) -> None:
    response = requests.post(f"{stack.api_url}/api/payouts", timeout=60,
                             headers={"Authorization": f"Bearer {OTHER_KEY}"},
                             json={"batch_id": batch_id, "items": items(batch_id, count)})
    assert response.status_code == 202, response.text


def other_report(stack, batch_id: str) -> dict:
    from payouts_core.store import BatchRef

    return stack.store.report(BatchRef("other", batch_id))


@BROKERS
def test_a_new_clients_batch_is_not_queued_behind_anothers_backlog(make_stack, broker):
    """A's 1,500 items take ~15 s at 100 items/s; B's 5 items, posted once A's are all queued,
    complete while most of A's are still waiting (behind A's queue they would come last)."""
    stack = make_stack(broker, **SLOW)
    stack.start_service()
    assert stack.post("a1", items("a1", 1500)).status_code == 202
    wait_for(lambda: stack.report("a1")["processed"] >= 1, 30, "A's first items")

    post_as_other(stack, "b1", 5)
    b = wait_for(lambda: (r := other_report(stack, "b1")) and r["status"] == "completed" and r, 60,
                 "B's batch")

    assert b["successful"] == 5
    assert stack.report("a1")["processed"] < 1000  # A still has most of its backlog ahead
    stack.assert_exactly_once(["a1"], timeout=120)


@BROKERS
def test_one_clients_batches_complete_in_their_order(make_stack, broker):
    stack = make_stack(broker, **SLOW)
    stack.start_service()
    for batch_id in ("o1", "o2", "o3"):
        assert stack.post(batch_id, items(batch_id, 300)).status_code == 202

    reports = stack.assert_exactly_once(["o1", "o2", "o3"], timeout=120)

    completed = [r["completed_at"] for r in reports]
    assert completed == sorted(completed)


@BROKERS
def test_a_publisher_killed_while_waiting_its_turn_loses_nothing(make_stack, broker):
    """The publish task opens its batch, then waits for the client's earlier publish (a turn the
    test holds, as a long chord being published would); its worker is SIGKILLed there. The batch
    still completes exactly once: the publish message comes back (at once on RabbitMQ, after the
    visibility timeout on Redis), and the sweeper re-drives an opened batch that its publisher
    stopped keeping fresh."""
    stack = make_stack(broker, **SLOW)
    worker = stack.start_service()
    held, release = threading.Event(), threading.Event()

    def earlier_publisher() -> None:
        with publishing_turn(CLIENT, connection=stack.client, wait_max_s=0):
            held.set()
            release.wait(120)

    holder = threading.Thread(target=earlier_publisher)
    holder.start()
    try:
        assert held.wait(10)
        assert stack.post("w1", items("w1", 50)).status_code == 202
        wait_for(lambda: stack.store.batch_state(stack.ref("w1")) == "processing", 30,
                 "the publish task opened the batch")
        time.sleep(1)  # it now waits its turn: nothing published
        assert stack.report("w1")["processed"] == 0

        worker.signal_group(signal.SIGKILL)
        worker.wait()
        stack.start_worker()
    finally:
        release.set()
        holder.join()

    stack.assert_exactly_once(["w1"], timeout=120)


@BROKERS
def test_a_retry_does_not_wait_behind_its_clients_backlog(make_stack, broker):
    """Item 0 times out twice (backoffs of 2.5-5 s, longer than settle waits inside a task, so
    each goes through the broker) at the head of 3,000 items (~30 s at 100 items/s). Through the
    client's retry queue it is paid while most of the batch still waits; through the client's own
    queue each retry would wait behind every item queued after it, and it would end last."""
    stack = make_stack(broker, **SLOW, PAYOUTS_VISIBILITY_TIMEOUT_S="20",
                       PAYOUTS_RETRY_BACKOFF_BASE_S="5", PAYOUTS_RETRY_BACKOFF_MAX_S="5")
    stack.start_service()
    batch = items("r1", 1, pix_key="timeout.twice@pix.test") + items("r1", 2999, start=1)
    assert stack.post("r1", batch).status_code == 202

    first = wait_for(lambda: (r := stack.report("r1"))["details"][0]["status"] == "paid" and r, 120,
                     "item 0 paid")

    assert first["details"][0]["attempts"] == 3
    assert first["processed"] < 2000  # the backlog was still ahead of the retries' old place
    stack.assert_exactly_once(["r1"], timeout=180)


@BROKERS
def test_exactly_once_when_a_worker_dies_serving_two_clients(make_stack, broker):
    stack = make_stack(broker, **SLOW)
    worker = stack.start_service()
    assert stack.post("k1", items("k1", 400)).status_code == 202
    post_as_other(stack, "k2", 400)
    wait_for(lambda: stack.report("k1")["processed"] >= 50, 60, "A's batch under way")

    worker.signal_group(signal.SIGKILL)
    worker.wait()
    stack.start_worker()

    stack.assert_exactly_once(["k1"], timeout=180)
    final = wait_for(lambda: (r := other_report(stack, "k2")) and r["status"] == "completed" and r,
                     180, "B's batch after the kill")
    assert final["successful"] == 400


def test_a_worker_restarted_after_a_client_first_posted_consumes_it(make_stack):
    """A key added by a rolling deploy: the API knows the client before the running worker does,
    so the worker declares the client's queues when its first batch arrives; the worker restarted
    with the new key knows it from the start and declares them again. Both declarations must be
    alike: they were a quorum queue, then a classic one, which RabbitMQ refused
    (PRECONDITION_FAILED) and the restarted worker consumed nothing. Every client queue is a
    quorum queue, as the design needs (a dead worker's messages return; nothing is lost)."""
    stack = make_stack("rabbitmq")
    stack.start_api()
    stack.start_beat()
    without_other = "tests:tests-key-0123456789,tests:rotated-key-0123456789"
    old = stack.start_worker(env={"PAYOUTS_API_KEYS": without_other})
    post_as_other(stack, "n1", 20)
    wait_for(lambda: (r := other_report(stack, "n1")) and r["status"] == "completed", 60,
             "the new client's first batch, on the worker started without its key")

    old.send_signal(signal.SIGTERM)
    assert old.wait(timeout=60) == 0
    stack.start_worker()  # now with every key: `other` is consumed from its first message
    post_as_other(stack, "n2", 20)
    assert stack.post("n3", items("n3", 20)).status_code == 202

    stack.assert_exactly_once(["n3"], timeout=60)
    wait_for(lambda: (r := other_report(stack, "n2")) and r["status"] == "completed", 60,
             "the new client's batch after the restart")
    types = stack.vhost.queue_types()
    ours = {name: kind for name, kind in types.items() if name.startswith("payouts.")}
    assert set(ours) >= {"payouts.batches", "payouts.settle.tests", "payouts.settle.other",
                         "payouts.retry.tests", "payouts.retry.other"}, types
    assert set(ours.values()) == {"quorum"}, ours
