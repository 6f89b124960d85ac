"""The store's money rules on a real Redis, called as the settle task calls them."""

from __future__ import annotations

import pytest

from payouts_tasks.store import Order, PayoutStore, fingerprint


@pytest.fixture
def store(redis_client):
    return PayoutStore(redis_client)


def open_batch(store, batch_id: str, external_ids: list[str]) -> None:
    orders = [Order(i, e, "u", 100, "a@b.com", "a***@b.com") for i, e in enumerate(external_ids)]
    assert store.create_batch(batch_id, fingerprint({"b": batch_id}), orders)[0]
    store.open_batch(batch_id)


def counters(store, batch_id: str) -> tuple:
    report = store.report(batch_id)
    return report["processed"], report["successful"], report["failed"]


def test_claim_is_taken_once_and_resumed_by_the_same_item(store, uid):
    open_batch(store, f"a-{uid}", [f"x-{uid}"])
    open_batch(store, f"b-{uid}", [f"x-{uid}"])

    first = store.begin_settlement(f"a-{uid}", 0)
    other = store.begin_settlement(f"b-{uid}", 0)
    again = store.begin_settlement(f"a-{uid}", 0)  # a redelivery of the same item

    assert first.action == "settle" and first.claim_generation == 1
    assert other.action == "wait" and other.waiting_on == f"a-{uid}#0"
    assert again.action == "settle" and again.claim_generation == 1 and again.attempts == 2


def test_outcome_is_counted_once(store, uid):
    open_batch(store, f"once-{uid}", [f"o-{uid}"])
    store.begin_settlement(f"once-{uid}", 0)

    assert store.record_paid(f"once-{uid}", 0, "E1", 1) == "paid"
    assert store.record_paid(f"once-{uid}", 0, "E1", 1) == "paid"
    assert store.record_failed(f"once-{uid}", 0, "AB03", "late") == "paid"
    assert counters(store, f"once-{uid}") == (1, 1, 0)


def test_a_failed_external_id_is_claimed_again_with_a_new_generation(store, uid):
    open_batch(store, f"f1-{uid}", [f"g-{uid}"])
    store.begin_settlement(f"f1-{uid}", 0)
    store.record_failed(f"f1-{uid}", 0, "AC03", "invalid account")
    open_batch(store, f"f2-{uid}", [f"g-{uid}"])

    decision = store.begin_settlement(f"f2-{uid}", 0)

    assert decision.action == "settle" and decision.claim_generation == 2


def test_a_late_success_of_the_same_claim_turns_failed_into_paid(store, uid):
    batch_id = f"late-{uid}"
    open_batch(store, batch_id, [f"l-{uid}"])
    store.begin_settlement(batch_id, 0)
    store.record_failed(batch_id, 0, "AB03", "gave up")  # one delivery gave up ...

    outcome = store.record_paid(batch_id, 0, "E-late", 1)  # ... while another was still paying

    assert outcome == "paid"
    assert counters(store, batch_id) == (1, 1, 0)
    detail = store.report(batch_id)["details"][0]
    assert detail["e2e_id"] == "E-late" and "failure_code" not in detail
    assert store.claim(f"l-{uid}")["state"] == "paid"


def test_a_late_success_after_the_external_id_was_claimed_again_is_left_to_reconciliation(store, uid):
    open_batch(store, f"r1-{uid}", [f"r-{uid}"])
    store.begin_settlement(f"r1-{uid}", 0)
    store.record_failed(f"r1-{uid}", 0, "AB03", "gave up")
    open_batch(store, f"r2-{uid}", [f"r-{uid}"])
    assert store.begin_settlement(f"r2-{uid}", 0).claim_generation == 2

    assert store.record_paid(f"r1-{uid}", 0, "E-old", 1) == "failed"
    assert store.claim(f"r-{uid}")["batch_id"] == f"r2-{uid}"


def test_a_failed_publisher_discards_its_batch_only_while_it_holds_the_lease(store, uid, redis_client):
    orders = [Order(0, f"d-{uid}", "u", 100, "a@b.com", "a***@b.com")]
    store.create_batch(f"mine-{uid}", "fp", orders, lease_token="token-a")
    assert not store.discard_batch(f"mine-{uid}", "token-b")
    assert store.discard_batch(f"mine-{uid}", "token-a")
    assert store.report(f"mine-{uid}") is None

    store.create_batch(f"taken-{uid}", "fp", orders, publish_lease_s=1, lease_token="token-a")
    redis_client.delete(f"payouts:batch:taken-{uid}:publisher")  # the lease expired ...
    assert store.take_over_publishing(f"taken-{uid}")  # ... and the sweeper took the batch over
    assert not store.discard_batch(f"taken-{uid}", "token-a")
    assert store.report(f"taken-{uid}") is not None
