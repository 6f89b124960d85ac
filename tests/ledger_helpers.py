"""Helpers for the ledger's read side: wait until the archiver holds all of a batch, then make
Redis forget it the way retention will (its keys and its entries in the batch indexes)."""

from __future__ import annotations

from payouts_core.rules import encode_id
from payouts_core.store import (
    ALL_BATCHES,
    OPEN_BATCHES,
    BatchRef,
    PayoutStore,
    batch_keys,
    client_batches_key,
)
from tests.conftest import ledger_rows, wait_for


def wait_archived(store: PayoutStore, ref: BatchRef, timeout: float = 60.0) -> None:
    """Until the ledger holds the batch completed, with every event Redis counted for it."""
    def archived() -> bool:
        counted = store.client.hget(batch_keys(ref)[0], "events")
        rows = ledger_rows("SELECT state, last_seq FROM batches WHERE client = %s AND batch_id = %s",
                           *ref)
        return bool(counted) and rows == [("completed", int(counted))]

    wait_for(archived, timeout, f"batch {ref.batch_id} archived")


def forget_in_redis(store: PayoutStore, ref: BatchRef) -> None:
    """What retention deletes for an archived batch (the integrator's job; done by hand here)."""
    with store.client.pipeline(transaction=True) as pipe:
        pipe.delete(*batch_keys(ref))
        pipe.zrem(client_batches_key(ref.client), encode_id(ref.batch_id))
        pipe.zrem(ALL_BATCHES, ref.member)
        pipe.srem(OPEN_BATCHES, ref.member)
        pipe.execute()
    assert store.report_json(ref) is None
