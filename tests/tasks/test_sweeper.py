"""The sweep pass on a real Redis: one unreadable batch never stops it (issue 10)."""

from __future__ import annotations

from payouts_core.store import BatchRef, Order, batch_keys, fingerprint
from payouts_tasks.sweeper import sweep


def final_but_not_completed(store, ref: BatchRef, external_id: str) -> None:
    """A batch whose items are all final but whose chord callback was lost."""
    store.create_batch(ref, fingerprint({"b": ref.batch_id}), [Order(0, external_id, "u", 100,
                                                                     "a@b.com", "a***@b.com")],
                       lease_token="t")
    store.open_batch(ref, "t")
    store.begin_settlement(ref, 0, 6)
    store.record_failed(ref, 0, "AC03", "invalid account")
    store.client.hset(batch_keys(ref)[0], "progress_ms", 0)  # idle for ages


def test_one_corrupt_batch_is_reported_and_the_others_are_still_swept(store, redis_client, uid):
    corrupt, healthy = BatchRef("sweep", f"a-corrupt-{uid}"), BatchRef("sweep", f"b-healthy-{uid}")
    final_but_not_completed(store, corrupt, f"c-{uid}")
    final_but_not_completed(store, healthy, f"h-{uid}")
    redis_client.hset(batch_keys(corrupt)[0], "total", "not-a-number")

    done = sweep()

    assert done[corrupt.member] == "error"
    assert done[healthy.member] == "completed"
    assert store.summary(healthy)["status"] == "completed"
