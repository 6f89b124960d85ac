"""The store's money rules on a real Redis, called as the settle task calls them."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from payouts_core.rules import idempotency_key, parse_idempotency_key
from payouts_core.store import (
    ALL_BATCHES,
    CLAIM_CHECK_CHUNK,
    OPEN_BATCHES,
    STATS,
    SWEEP_LOCK,
    BatchConflict,
    BatchRef,
    Order,
    PayoutStore,
    batch_keys,
    claim_key,
    fingerprint,
)
from tests.claims import claim_of

MAX_ATTEMPTS = 6


@pytest.fixture
def store(redis_client):
    return PayoutStore(redis_client)


def ref(batch_id: str, client: str = "t") -> BatchRef:
    return BatchRef(client, batch_id)


def begin(store, batch: BatchRef, index: int = 0, max_attempts: int = MAX_ATTEMPTS):
    return store.begin_settlement(batch, index, max_attempts)


def order(i: int, external_id: str, amount: int = 100, pix_key: str = "a@b.com") -> Order:
    return Order(i, external_id, "u", amount, pix_key, "a***@b.com")


def open_batch(store, batch: BatchRef, external_ids: list[str], amount: int = 100) -> None:
    orders = [order(i, e, amount) for i, e in enumerate(external_ids)]
    assert store.create_batch(batch, fingerprint({"b": batch.batch_id, "a": amount}), orders,
                              lease_token="t")[0]
    assert store.open_batch(batch, "t")


def counters(store, batch: BatchRef) -> tuple:
    report = store.report(batch)
    return report["processed"], report["successful"], report["failed"]


def test_claim_is_taken_once_and_resumed_by_the_same_item(store, uid):
    open_batch(store, ref(f"a-{uid}"), [f"x-{uid}"])
    open_batch(store, ref(f"b-{uid}"), [f"x-{uid}"])

    first = begin(store, ref(f"a-{uid}"))
    other = begin(store, ref(f"b-{uid}"))
    again = begin(store, ref(f"a-{uid}"))  # a redelivery of the same item

    assert first.action == "settle" and first.claim_generation == 1
    assert other.action == "wait" and other.waiting_on == f"a-{uid}#0"
    assert again.action == "settle" and again.claim_generation == 1 and again.attempts == 2


def test_two_clients_with_equal_ids_are_unrelated(store, uid):
    """Same batch id and external id under two clients: two batches, two claims, two keys."""
    for client, amount in (("store-acme", 9), ("store-globex", 1)):
        open_batch(store, ref(f"same-{uid}", client), [f"x-{uid}"], amount=amount)
    acme = begin(store, ref(f"same-{uid}", "store-acme"))
    globex = begin(store, ref(f"same-{uid}", "store-globex"))

    assert acme.action == globex.action == "settle"
    assert idempotency_key("store-acme", f"x-{uid}", 1) != idempotency_key("store-globex", f"x-{uid}", 1)
    store.record_paid(ref(f"same-{uid}", "store-globex"), 0, "E-globex", 1)
    assert store.report(ref(f"same-{uid}", "store-acme"))["details"][0]["status"] == "processing"
    assert claim_of(store, "store-acme", f"x-{uid}")["state"] == "inflight"


def test_outcome_is_counted_once(store, uid):
    batch = ref(f"once-{uid}")
    open_batch(store, batch, [f"o-{uid}"])
    begin(store, batch)

    assert store.record_paid(batch, 0, "E1", 1) == "paid"
    assert store.record_paid(batch, 0, "E1", 1) == "paid"
    assert store.record_failed(batch, 0, "AB03", "late") == "paid"
    assert counters(store, batch) == (1, 1, 0)


def test_same_terms_are_a_duplicate_other_terms_fail_as_reused(store, uid):
    open_batch(store, ref(f"p-{uid}"), [f"d-{uid}"])
    begin(store, ref(f"p-{uid}"))
    store.record_paid(ref(f"p-{uid}"), 0, "E-orig", 1)
    open_batch(store, ref(f"same-{uid}"), [f"d-{uid}"])
    open_batch(store, ref(f"other-{uid}"), [f"d-{uid}"], amount=101)

    assert begin(store, ref(f"same-{uid}")).action == "duplicate"
    assert begin(store, ref(f"other-{uid}")).action == "reused"

    assert store.report(ref(f"same-{uid}"))["details"][0]["duplicate_of"]["e2e_id"] == "E-orig"
    failed = store.report(ref(f"other-{uid}"))["details"][0]
    assert failed["status"] == "failed" and failed["failure_code"] == "EXTERNAL_ID_REUSED"
    assert f"p-{uid}" in failed["failure_reason"]
    assert claim_of(store, "t", f"d-{uid}")["batch_id"] == f"p-{uid}"  # the paid claim is untouched


def test_other_terms_while_in_flight_fail_without_waiting(store, uid):
    open_batch(store, ref(f"i1-{uid}"), [f"f-{uid}"])
    assert begin(store, ref(f"i1-{uid}")).action == "settle"
    open_batch(store, ref(f"i2-{uid}"), [f"f-{uid}"], amount=5)

    assert begin(store, ref(f"i2-{uid}")).action == "reused"
    assert store.conflicting_claims("t", [order(0, f"f-{uid}", 5)]) == [(0, f"batch i1-{uid} item 0")]
    assert store.conflicting_claims("t", [order(0, f"f-{uid}", 100)]) == []
    assert store.conflicting_claims("someone-else", [order(0, f"f-{uid}", 5)]) == []


def test_a_whole_batch_is_checked_against_held_claims_in_one_call(store, uid):
    """Paid with the same terms is a duplicate (accepted); paid or in flight with other terms is
    refused, at every position it appears; failed, unknown and other clients' ids are free."""
    paid, inflight, failed = f"p:{uid}", f"i/{uid}", f"f%{uid}"
    open_batch(store, ref(f"held-{uid}"), [paid, inflight, failed])
    for index in range(3):
        begin(store, ref(f"held-{uid}"), index)
    store.record_paid(ref(f"held-{uid}"), 0, "E-p", 1)
    store.record_failed(ref(f"held-{uid}"), 2, "AC03", "invalid account")
    batch = [order(0, paid), order(1, paid, 7), order(2, inflight, 7), order(3, failed, 7),
             order(4, f"new-{uid}", 7), order(5, inflight, 7)]

    assert store.conflicting_claims("t", batch) == [
        (1, f"batch held-{uid} item 0"), (2, f"batch held-{uid} item 1"),
        (5, f"batch held-{uid} item 1")]
    assert store.conflicting_claims("other-client", batch) == []


def test_the_held_claims_check_covers_every_chunk_of_a_large_batch(store, uid):
    """Ids are checked CLAIM_CHECK_CHUNK at a time: a conflict in any chunk, at its edges too,
    is found at its own position."""
    edges = [0, CLAIM_CHECK_CHUNK - 1, CLAIM_CHECK_CHUNK, 2 * CLAIM_CHECK_CHUNK + 1]
    open_batch(store, ref(f"big-held-{uid}"), [f"big-{uid}-{i}" for i in edges])
    for index in range(len(edges)):
        begin(store, ref(f"big-held-{uid}"), index)
    batch = [order(i, f"big-{uid}-{i}", 7) for i in range(2 * CLAIM_CHECK_CHUNK + 5)]

    assert store.conflicting_claims("t", batch) == [
        (i, f"batch big-held-{uid} item {n}") for n, i in enumerate(edges)]


def test_attempts_used_up_turn_into_lookups(store, uid):
    batch = ref(f"look-{uid}")
    open_batch(store, batch, [f"k-{uid}"])
    decisions = [begin(store, batch, max_attempts=2) for _ in range(4)]

    assert [d.action for d in decisions] == ["settle", "settle", "lookup", "lookup"]
    assert [d.attempts for d in decisions] == [1, 2, 2, 2]
    assert decisions[3].called_ms == decisions[1].called_ms > 0
    assert claim_of(store, "t", f"k-{uid}")["state"] == "inflight"
    assert store.report(batch)["details"][0]["status"] == "processing"


def test_a_failed_external_id_is_claimed_again_with_a_new_generation(store, uid):
    open_batch(store, ref(f"f1-{uid}"), [f"g-{uid}"])
    begin(store, ref(f"f1-{uid}"))
    store.record_failed(ref(f"f1-{uid}"), 0, "AC03", "invalid account")
    open_batch(store, ref(f"f2-{uid}"), [f"g-{uid}"], amount=999)  # no money moved: any terms

    decision = begin(store, ref(f"f2-{uid}"))

    assert decision.action == "settle" and decision.claim_generation == 2


def test_a_late_success_of_the_same_claim_turns_failed_into_paid(store, uid):
    batch = ref(f"late-{uid}")
    open_batch(store, batch, [f"l-{uid}"])
    begin(store, batch)
    store.record_failed(batch, 0, "AB03", "gave up")  # one delivery gave up ...

    outcome = store.record_paid(batch, 0, "E-late", 1)  # ... while another was still paying

    assert outcome == "paid"
    assert counters(store, batch) == (1, 1, 0)
    detail = store.report(batch)["details"][0]
    assert detail["e2e_id"] == "E-late" and "failure_code" not in detail
    assert claim_of(store, "t", f"l-{uid}")["state"] == "paid"


def test_a_late_success_after_the_external_id_was_claimed_again_is_left_to_reconciliation(store, uid):
    open_batch(store, ref(f"r1-{uid}"), [f"r-{uid}"])
    begin(store, ref(f"r1-{uid}"))
    store.record_failed(ref(f"r1-{uid}"), 0, "AB03", "gave up")
    open_batch(store, ref(f"r2-{uid}"), [f"r-{uid}"])
    assert begin(store, ref(f"r2-{uid}")).claim_generation == 2

    assert store.record_paid(ref(f"r1-{uid}"), 0, "E-old", 1) == "failed"
    assert claim_of(store, "t", f"r-{uid}")["batch_id"] == f"r2-{uid}"


def full_pix_keys_held(redis_client, batch: BatchRef) -> int:
    """How many of the batch's orders still hold a full PIX key (only unfinished items may)."""
    return sum("pix_key" in json.loads(v) for v in redis_client.hvals(batch_keys(batch)[2]))


def test_full_pix_keys_are_dropped_when_items_are_final(store, redis_client, uid):
    batch = ref(f"pk-{uid}")
    open_batch(store, batch, [f"k1-{uid}", f"k2-{uid}"])
    assert full_pix_keys_held(redis_client, batch) == 2
    begin(store, batch, 0)
    store.record_paid(batch, 0, "E1", 1)

    assert full_pix_keys_held(redis_client, batch) == 1
    begin(store, batch, 1)
    store.record_failed(batch, 1, "AC03", "invalid account")
    assert full_pix_keys_held(redis_client, batch) == 0
    assert "a@b.com" not in json.dumps(redis_client.hgetall(batch_keys(batch)[2]))
    assert store.item_terms(batch)[0] == order(0, "x").terms


def test_a_failed_publisher_discards_its_batch_only_while_it_holds_the_lease(store, uid, redis_client):
    orders = [order(0, f"d-{uid}")]
    store.create_batch(ref(f"mine-{uid}"), "fp", orders, lease_token="token-a")
    assert not store.discard_batch(ref(f"mine-{uid}"), "token-b")
    assert store.discard_batch(ref(f"mine-{uid}"), "token-a")
    assert store.report(ref(f"mine-{uid}")) is None

    taken = ref(f"taken-{uid}")
    store.create_batch(taken, "fp", orders, publish_lease_s=1, lease_token="token-a")
    redis_client.delete(batch_keys(taken)[3])  # the lease expired ...
    assert store.take_over_publishing(taken)  # ... and the sweeper took the batch over
    assert not store.discard_batch(taken, "token-a")
    assert store.report(taken) is not None


def test_only_the_lease_holder_opens_a_batch_and_only_once_published(store, uid):
    """A publish message that outlived its lease while the sweeper took the batch over must not
    publish a second chord; the taker's own redelivery may publish again until it is marked."""
    batch = ref(f"lease-{uid}")
    store.create_batch(batch, "fp", [order(0, f"l-{uid}")], lease_token="api")

    assert not store.open_batch(batch, "someone-else")  # the lease is held
    assert store.batch_state(batch) == "accepting"
    assert store.open_batch(batch, "api")
    assert store.open_batch(batch, "api")  # its redelivery after a crash mid-publish
    assert not store.open_batch(batch, "sweeper")  # opened by another publisher
    store.mark_published(batch)
    assert not store.open_batch(batch, "api")  # published: nobody publishes it again
    assert not store.open_batch(ref(f"unknown-{uid}"), "api")


def test_a_new_batch_never_writes_into_keys_that_exist(store, redis_client, uid):
    batch = ref(f"squat-{uid}")
    redis_client.hset(batch_keys(batch)[1], "0", "{}")  # items without a batch: corrupt or foreign

    with pytest.raises(BatchConflict):
        store.create_batch(batch, "fp", [order(0, f"s-{uid}")])
    assert not redis_client.exists(batch_keys(batch)[0])


def test_ids_with_colons_cannot_reach_another_batch(store, uid):
    """Issue 10: `X:items` used to write its header into X's items hash."""
    open_batch(store, ref(f"X{uid}"), [f"x1-{uid}"])
    open_batch(store, ref(f"X{uid}:items"), [f"x2-{uid}"])
    open_batch(store, ref(f"X{uid}:orders", client="t:items"), [f"x3-{uid}"])

    assert store.report(ref(f"X{uid}"))["details"][0]["external_id"] == f"x1-{uid}"
    assert store.report(ref(f"X{uid}:items"))["total"] == 1
    assert BatchRef.from_member(ref(f"X{uid}:orders", "t:items").member) == ref(f"X{uid}:orders", "t:items")


ids = st.text(min_size=1, max_size=12)


@settings(max_examples=500, deadline=None)
@given(ids, ids, ids, ids)
def test_distinct_ids_and_clients_give_disjoint_keys(client_a, id_a, client_b, id_b):
    """Any two distinct (client, id) pairs share no storage key, whatever characters they hold."""
    fixed = {ALL_BATCHES, OPEN_BATCHES, STATS, SWEEP_LOCK}

    def keys(client, some_id):
        return {*batch_keys(BatchRef(client, some_id)), claim_key(client, some_id)}

    a, b = keys(client_a, id_a), keys(client_b, id_b)
    assert len(a) == 5 and not a & fixed
    if (client_a, id_a) != (client_b, id_b):
        assert not a & b
    key = idempotency_key(client_a, id_a, 3)
    assert parse_idempotency_key(key) == (client_a, id_a, 3)
    assert BatchRef.from_member(BatchRef(client_a, id_a).member) == (client_a, id_a)


def test_every_transition_script_is_declared_once_and_runs_on_the_stores_client(store):
    """Each store attribute declared as a TransitionScript runs the script it is named after; every
    script in payouts_core/lua but lib.lua (the shared prelude) and emit_event.lua (registered
    without it) is declared by exactly one store, so none is orphaned or loaded twice."""
    from importlib.resources import files

    from payouts_core.scripts import Transition
    from payouts_core.store import TransitionScript
    from payouts_core.webhooks import WebhookStore

    declared = [(cls, attr, value.script) for cls in (PayoutStore, WebhookStore)
                for attr, value in vars(cls).items() if isinstance(value, TransitionScript)]
    scripts = sorted(p.name.removesuffix(".lua") for p in files("payouts_core").joinpath("lua").iterdir()
                     if p.name.endswith(".lua") and p.name not in ("lib.lua", "emit_event.lua"))
    assert sorted(script for _, _, script in declared) == scripts
    assert all(attr == f"_{script}" for _, attr, script in declared)

    transition = store._note_event
    assert isinstance(transition, Transition) and transition.name == "note_event"
    assert store._note_event is transition  # built once per store
    assert transition._script.registered_client is store.client
    assert not store._note_event([batch_keys(ref("none"))[0]], index=-1, type="probe")  # it runs
