"""Reconciliation finds each kind of discrepancy (real Redis, ledger entries written directly)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from payouts_cli.main import cli
from payouts_tasks.provider.simulated import SimulatedPixProvider
from payouts_tasks.reconcile import reconcile
from payouts_tasks.store import Order, PayoutStore, fingerprint, idempotency_key


@pytest.fixture
def store(redis_client):
    return PayoutStore(redis_client)


@pytest.fixture
def ledger(redis_client):
    return SimulatedPixProvider(redis_client, ispb="13935893")


def settle_directly(store, ledger, batch_id: str, external_ids: list[str]) -> dict:
    """A batch settled by calling the store and provider as the settle task does."""
    orders = [Order(i, e, "u", 100, "a@b.com", "a***@b.com") for i, e in enumerate(external_ids)]
    store.create_batch(batch_id, fingerprint({"b": batch_id}), orders)
    store.open_batch(batch_id)
    for i in range(len(orders)):
        decision = store.begin_settlement(batch_id, i)
        if decision.action == "settle":
            key = idempotency_key(decision.order["external_id"], decision.claim_generation)
            transfer = ledger.pay(idempotency_key=key, external_id=decision.order["external_id"],
                                  amount_cents=100, pix_key="a@b.com")
            store.record_paid(batch_id, i, transfer.e2e_id, decision.claim_generation)
    store.complete_batch(batch_id)
    return store.report(batch_id)


def test_a_clean_batch_has_no_discrepancy(store, ledger, uid):
    report = settle_directly(store, ledger, f"clean-{uid}", [f"a-{uid}", f"b-{uid}", f"a-{uid}"])
    assert [d["status"] for d in report["details"]] == ["paid", "paid", "duplicate"]
    assert reconcile(store, ledger, f"clean-{uid}") == []


def test_a_second_transfer_for_one_external_id_is_reported(store, ledger, uid):
    settle_directly(store, ledger, f"double-{uid}", [f"x-{uid}"])
    ledger.pay(idempotency_key=f"rogue-{uid}", external_id=f"x-{uid}", amount_cents=100,
               pix_key="a@b.com")

    kinds = {d.kind for d in reconcile(store, ledger, f"double-{uid}")}

    assert kinds == {"double_transfer", "transfer_without_paid_item"}
    result = CliRunner().invoke(cli, ["reconcile", f"double-{uid}", "--json"])
    assert result.exit_code == 1
    assert {d["kind"] for d in json.loads(result.stdout)} == kinds


def test_paid_item_without_transfer_and_bad_counters_are_reported(store, ledger, redis_client, uid):
    batch_id = f"tampered-{uid}"
    settle_directly(store, ledger, batch_id, [f"p-{uid}"])
    entry = json.loads(redis_client.hget(f"payouts:batch:{batch_id}:items", "0"))
    entry["e2e_id"] = "E00000000202601010000AAAAAAAAAAA"
    redis_client.hset(f"payouts:batch:{batch_id}:items", "0", json.dumps(entry))
    redis_client.hincrby(f"payouts:batch:{batch_id}", "failed", 1)

    kinds = sorted(d.kind for d in reconcile(store, ledger, batch_id))

    assert kinds == ["counters_mismatch", "paid_without_transfer", "transfer_without_paid_item"]


def test_unknown_batch_is_an_error(uid):
    result = CliRunner().invoke(cli, ["reconcile", f"nope-{uid}"])
    assert result.exit_code == 2
    assert "unknown batch" in result.stderr
