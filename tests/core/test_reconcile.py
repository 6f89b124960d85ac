"""Reconciliation finds each kind of discrepancy (real Redis, ledger entries written directly)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from payouts_cli.main import cli
from payouts_core.provider.simulated import SimulatedPixProvider
from payouts_core.reconcile import reconcile
from payouts_core.rules import idempotency_key
from payouts_core.store import BatchRef, Order, PayoutStore, batch_keys, fingerprint

CLIENT = "reconcile-tests"  # its deliberate discrepancies stay out of other tests


@pytest.fixture
def store(redis_client):
    return PayoutStore(redis_client)


@pytest.fixture
def ledger(redis_client):
    return SimulatedPixProvider(redis_client, ispb="13935893")


def settle_directly(store, ledger, batch_id: str, external_ids: list[str], client: str = CLIENT,
                    amount: int = 100) -> dict:
    """A batch settled by calling the store and provider as the settle task does."""
    ref = BatchRef(client, batch_id)
    orders = [Order(i, e, "u", amount, "a@b.com", "a***@b.com") for i, e in enumerate(external_ids)]
    store.create_batch(ref, fingerprint({"b": batch_id, "a": amount}), orders, lease_token="t")
    store.open_batch(ref, "t")
    for i in range(len(orders)):
        decision = store.begin_settlement(ref, i, 6)
        if decision.action == "settle":
            key = idempotency_key(client, decision.order["external_id"], decision.claim_generation)
            transfer = ledger.pay(idempotency_key=key, external_id=decision.order["external_id"],
                                  amount_cents=amount, pix_key="a@b.com")
            store.record_paid(ref, i, transfer.e2e_id, decision.claim_generation)
    store.complete_batch(ref)
    return store.report(ref)


def test_a_clean_batch_has_no_discrepancy(store, ledger, uid):
    report = settle_directly(store, ledger, f"clean-{uid}", [f"a-{uid}", f"b-{uid}", f"a-{uid}"])
    assert [d["status"] for d in report["details"]] == ["paid", "paid", "duplicate"]
    assert reconcile(store, ledger, f"clean-{uid}") == []


def test_a_second_transfer_for_one_external_id_is_reported(store, ledger, uid):
    settle_directly(store, ledger, f"double-{uid}", [f"x-{uid}"])
    ledger.pay(idempotency_key=idempotency_key(CLIENT, f"x-{uid}", 7), external_id=f"x-{uid}",
               amount_cents=100, pix_key="a@b.com")

    kinds = {d.kind for d in reconcile(store, ledger, f"double-{uid}")}

    assert kinds == {"double_transfer", "transfer_without_paid_item"}
    result = CliRunner().invoke(cli, ["reconcile", f"double-{uid}", "--json", "--no-ledger"])
    assert result.exit_code == 1
    assert {d["kind"] for d in json.loads(result.stdout)} == kinds


def test_paid_item_without_transfer_and_bad_counters_are_reported(store, ledger, redis_client, uid):
    batch_id = f"tampered-{uid}"
    settle_directly(store, ledger, batch_id, [f"p-{uid}"])
    header, items = batch_keys(BatchRef(CLIENT, batch_id))[:2]
    entry = json.loads(redis_client.hget(items, "0"))
    entry["e2e_id"] = "E00000000202601010000AAAAAAAAAAA"
    redis_client.hset(items, "0", json.dumps(entry))
    redis_client.hincrby(header, "failed", 1)

    kinds = sorted(d.kind for d in reconcile(store, ledger, batch_id))

    assert kinds == ["counters_mismatch", "paid_without_transfer", "transfer_without_paid_item"]


def test_unknown_batch_is_an_error(uid):
    result = CliRunner().invoke(cli, ["reconcile", f"nope-{uid}", "--no-ledger"])
    assert result.exit_code == 2
    assert "unknown batch" in result.stderr


def test_a_duplicate_whose_terms_differ_from_the_paid_original_is_reported(store, ledger,
                                                                          redis_client, uid):
    settle_directly(store, ledger, f"orig-{uid}", [f"t-{uid}"])
    settle_directly(store, ledger, f"dup-{uid}", [f"t-{uid}"])
    assert reconcile(store, ledger, f"dup-{uid}") == []
    orders = batch_keys(BatchRef(CLIENT, f"dup-{uid}"))[2]
    record = json.loads(redis_client.hget(orders, "0"))
    record["terms"] = "0" * 32  # what the old rule allowed: same id, other payout, "duplicate"
    redis_client.hset(orders, "0", json.dumps(record))

    assert [d.kind for d in reconcile(store, ledger, f"dup-{uid}")] == ["duplicate_terms_differ"]


def test_transfers_and_batches_are_checked_per_client(store, ledger, uid):
    settle_directly(store, ledger, f"shared-{uid}", [f"c-{uid}"], client="acme")
    settle_directly(store, ledger, f"shared-{uid}", [f"c-{uid}"], client="globex", amount=1)
    assert reconcile(store, ledger, client="acme") == []
    assert reconcile(store, ledger, f"shared-{uid}", client="globex") == []
    # A transfer whose key names no client cannot be matched to anyone's item.
    ledger.pay(idempotency_key=f"payout:{uid}:1", external_id=f"c-{uid}", amount_cents=1,
               pix_key="a@b.com")
    assert reconcile(store, ledger, client="acme") == []
    assert "transfer_without_client" in {d.kind for d in reconcile(store, ledger)}
    result = CliRunner().invoke(cli, ["reconcile", "--client", "acme", "--json", "--no-ledger"])
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    ledger_rows = CliRunner().invoke(cli, ["ledger", "--client", "globex", "--json"])
    rows = [t for t in json.loads(ledger_rows.stdout)["transfers"] if t["external_id"] == f"c-{uid}"]
    assert [(t["client"], t["amount_cents"]) for t in rows] == [("globex", 1)]


def test_an_unreadable_batch_is_reported_and_the_others_still_checked(store, ledger, redis_client, uid):
    settle_directly(store, ledger, f"good-{uid}", [f"g-{uid}"])
    settle_directly(store, ledger, f"bad-{uid}", [f"b-{uid}"], client="corrupt")
    redis_client.hset(batch_keys(BatchRef("corrupt", f"bad-{uid}"))[0], "total", "not-a-number")

    found = reconcile(store, ledger, client="corrupt")
    assert [(d.kind, d.batch_id) for d in found] == [("unreadable_batch", f"bad-{uid}")]
    assert reconcile(store, ledger, f"good-{uid}") == []


def test_a_second_transfer_under_a_key_written_out_is_a_double_transfer(store, ledger, uid):
    """The second key spelled out (generation 2 of this client's id), not built by the code
    under test: a later claim's payment next to the first one is reported."""
    settle_directly(store, ledger, f"double2-{uid}", [f"y-{uid}"])
    ledger.pay(idempotency_key=f"payout:{CLIENT}:y-{uid}:2", external_id=f"y-{uid}",
               amount_cents=100, pix_key="a@b.com")

    found = reconcile(store, ledger, f"double2-{uid}")

    assert ("double_transfer", f"y-{uid}") in {(d.kind, d.external_id) for d in found}


def test_an_item_paid_with_an_e2e_id_the_provider_never_made_is_reported(store, ledger, uid):
    ref = BatchRef(CLIENT, f"ghost-{uid}")
    store.create_batch(ref, fingerprint({"g": uid}), [Order(0, f"g-{uid}", "u", 100, "a@b.com",
                                                            "a***@b.com")], lease_token="t")
    store.open_batch(ref, "t")
    decision = store.begin_settlement(ref, 0, 6)
    store.record_paid(ref, 0, "E13935893202612041200ghost000000", decision.claim_generation)
    store.complete_batch(ref)

    found = reconcile(store, ledger, f"ghost-{uid}")

    assert [(d.kind, d.external_id) for d in found] == [("paid_without_transfer", f"g-{uid}")]


def test_a_transfer_for_an_item_still_settling_is_in_motion_until_the_item_is_final(store, ledger,
                                                                                    uid):
    """Reconciliation runs while batches settle: Redis is read before the provider, so the
    provider can hold a transfer whose item is not recorded paid yet. That is reported only once
    the item is final without naming it; a second transfer is reported at once."""
    ref = BatchRef(CLIENT, f"motion-{uid}")
    store.create_batch(ref, fingerprint({"m": uid}), [Order(0, f"m-{uid}", "u", 100, "a@b.com",
                                                            "a***@b.com")], lease_token="t")
    store.open_batch(ref, "t")
    decision = store.begin_settlement(ref, 0, 6)
    key = idempotency_key(CLIENT, f"m-{uid}", decision.claim_generation)
    transfer = ledger.pay(idempotency_key=key, external_id=f"m-{uid}", amount_cents=100,
                          pix_key="a@b.com")

    assert reconcile(store, ledger, f"motion-{uid}") == []  # paid at the PSP, not recorded yet

    ledger.pay(idempotency_key=idempotency_key(CLIENT, f"m-{uid}", decision.claim_generation + 1),
               external_id=f"m-{uid}", amount_cents=100, pix_key="a@b.com")
    assert {d.kind for d in reconcile(store, ledger, f"motion-{uid}")} == {"double_transfer"}

    store.record_failed(ref, 0, "PROVIDER_REJECTED", "rejected")
    store.complete_batch(ref)
    kinds = [d.kind for d in reconcile(store, ledger, f"motion-{uid}")]
    assert sorted(kinds) == ["double_transfer", "transfer_without_paid_item",
                             "transfer_without_paid_item"]
    assert transfer.e2e_id in " ".join(d.detail for d in reconcile(store, ledger, f"motion-{uid}"))
