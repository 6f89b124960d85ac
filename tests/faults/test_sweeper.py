"""The beat-driven sweeper: batches left behind are resumed, never stuck in `processing`."""

from __future__ import annotations

from payouts_core.store import Order, fingerprint
from payouts_tasks.routing import BATCH_QUEUE
from tests.faults.stack import items


def test_batch_whose_chord_never_ran_is_published_by_the_sweeper(make_stack):
    stack = make_stack()
    stack.start_beat()
    stack.start_worker()
    batch = items("never", 20)
    orders = [Order(i, it["external_id"], it["user_id"], it["amount_cents"], it["pix_key"], "s***")
              for i, it in enumerate(batch)]
    # What an API process that died between writing the batch and publishing it leaves behind.
    created, _ = stack.store.create_batch(stack.ref("unpublished"), fingerprint({"batch_id": "unpublished",
                                                                      "items": batch}),
                                          orders, publish_lease_s=1)
    assert created

    [report] = stack.assert_exactly_once(["unpublished"], timeout=120)
    assert report["successful"] == 20


def test_lost_settle_messages_are_re_driven(make_stack):
    stack = make_stack()
    stack.start_api()
    stack.start_beat()
    assert stack.post("lost", items("lost", 30)).status_code == 202
    # The broker loses every message of the batch (a flushed queue, a wiped broker): with no
    # worker running, that is its publish message, in the publish queue.
    assert stack.client.delete(BATCH_QUEUE) == 1
    stack.start_worker()

    [report] = stack.assert_exactly_once(["lost"], timeout=120)
    assert report["successful"] == 30
