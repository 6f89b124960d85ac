"""The merged history where the two stores disagree: a Redis and a database of this module's own,
archived by passes the test chooses, so the ledger can be made to lag Redis on purpose."""

from __future__ import annotations

import time

import pytest

from payouts_core.ledger.archiver import Archiver
from payouts_core.ledger.reads import LedgerReads, merged_history
from payouts_core.store import BatchRef, Order, PayoutStore, fingerprint


@pytest.fixture
def store(own_redis):
    return PayoutStore(own_redis)


@pytest.fixture
def archiver(own_redis, ledger_db):
    archiver = Archiver(own_redis, ledger_db)
    yield archiver
    archiver.close()


@pytest.fixture
def ledger(ledger_db):
    reader = LedgerReads(ledger_db)
    yield reader
    reader.close()


def drain(archiver) -> None:
    while archiver.drain_once():
        pass


def opened(store, client: str, batch_id: str) -> BatchRef:
    ref = BatchRef(client, batch_id)
    order = Order(0, f"{batch_id}-x", "u", 100, "a@b.com", "a***@b.com", "email")
    store.create_batch(ref, fingerprint({"b": batch_id}), [order], lease_token="t")
    store.open_batch(ref, "t")
    time.sleep(0.002)  # creation times a millisecond or more apart
    return ref


def complete(store, ref: BatchRef) -> None:
    decision = store.begin_settlement(ref, 0, 6)
    store.record_paid(ref, 0, "E" + "0" * 31, decision.claim_generation)
    assert store.complete_batch(ref)[0] == "completed"


def walk(store, ledger, client: str, limit: int, status: str | None = None) -> list[str]:
    seen, cursor = [], None
    while True:
        page, cursor = merged_history(store, ledger, client, limit, cursor, status)
        seen += [summary["batch_id"] for summary in page]
        if cursor is None:
            return seen


def test_a_batch_redis_holds_is_listed_as_redis_has_it_while_the_ledger_lags(store, archiver, ledger, uid):
    client = f"lag{uid}"
    refs = [opened(store, client, f"b{i}") for i in range(3)]
    drain(archiver)  # the ledger: all three processing
    complete(store, refs[1])  # Redis: b1 completed; the ledger does not know yet

    assert walk(store, ledger, client, 1, "processing") == ["b2", "b0"]
    assert walk(store, ledger, client, 1, "completed") == ["b1"]
    page, _ = merged_history(store, ledger, client, 5, None, "completed")
    assert [(s["batch_id"], s["status"], s["processed"]) for s in page] == [("b1", "completed", 1)]


def test_a_page_where_redis_stopped_early_leaves_older_archived_batches_to_the_next(
        store, archiver, ledger, uid):
    """Redis examines at most 2,000 batches a page: with 2,001 running batches newer than the
    archived ones, the completed filter finds none of them in Redis's page, and the archived
    ones must come once, on the page after, not on both."""
    client = f"many{uid}"
    archived = [opened(store, client, f"old{i}") for i in range(3)]
    for ref in archived:
        complete(store, ref)
    drain(archiver)
    for ref in archived:
        assert store.retire(ref, store.retention_facts(ref)["events"])
    for i in range(2001):
        opened_ref = BatchRef(client, f"new{i:04d}")
        store.create_batch(opened_ref, fingerprint({"n": i}),
                           [Order(0, f"n{i}", "u", 1, "a@b.com", "a***@b.com", "email")],
                           lease_token="t")
    time.sleep(0.002)

    first, cursor = merged_history(store, ledger, client, 10, None, "completed")

    assert first == [] and cursor is not None
    assert walk(store, ledger, client, 10, "completed") == ["old2", "old1", "old0"]
    assert len(walk(store, ledger, client, 100)) == 2004
