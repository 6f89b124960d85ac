"""The sweep pass on a real Redis: one unreadable batch never stops it (issue 10)."""

from __future__ import annotations

import uuid

import pytest

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


@pytest.fixture(scope="module")
def empty_ledger(ledger_url):
    """A migrated ledger database holding nothing: retirement never deletes the session's
    batches from Redis here (other tests still read them)."""
    import psycopg

    from payouts_core.ledger.schema import upgrade

    name = f"sweeper_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ledger_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = ledger_url.rsplit("/", 1)[0] + "/" + name
    upgrade(url)
    return url


def test_retirement_waits_for_the_ledger_and_does_not_block_the_others(store, empty_ledger, uid):
    """A batch past retention that the ledger lacks is kept and looked at later; others go on."""
    from payouts_core.store import COMPLETED_BATCHES
    from payouts_tasks.sweeper import retire_due

    ref = BatchRef("tests", f"unarchived-{uid}")
    store.create_batch(ref, fingerprint({"u": uid}), [Order(0, f"u-{uid}", "u", 1, "a@b.com", "a***")],
                       lease_token="t")
    store.open_batch(ref, "t")
    decision = store.begin_settlement(ref, 0, 6)
    store.record_paid(ref, 0, "E-u", decision.claim_generation)
    assert store.complete_batch(ref)[0] == "completed"
    # The ledger (a migrated database with no such batch) does not hold it.
    before = store.client.zscore(COMPLETED_BATCHES, ref.member)
    assert retire_due(empty_ledger, retention_s=0, limit=10_000) == 0
    assert store.batch_state(ref) == "completed"
    assert store.client.zscore(COMPLETED_BATCHES, ref.member) > before + 500_000


def test_an_unreadable_completed_batch_never_stops_retirement(store, empty_ledger, uid):
    """A corrupt batch hash is skipped (and looked at later); the sweep goes on."""
    from payouts_core.store import COMPLETED_BATCHES
    from payouts_tasks.sweeper import retire_due

    ref = BatchRef("tests", f"corrupt-{uid}")
    store.client.hset(batch_keys(ref)[0], mapping={"state": "completed", "events": "many"})
    store.client.zadd(COMPLETED_BATCHES, {ref.member: 1})
    assert retire_due(empty_ledger, retention_s=0, limit=10_000) == 0
    assert store.client.zscore(COMPLETED_BATCHES, ref.member) > 1  # to be looked at again later
