"""Accepting a batch and building its one chord, in-process on the real store."""

from __future__ import annotations

import pytest

import payouts_tasks.batches as batches
from payouts_core.store import BatchRef, ExternalIdReused, Order, fingerprint


def orders(uid: str, amount: int = 100) -> list[Order]:
    return [Order(i, f"e{i}-{uid}", "u", amount, "a@b.com", "a***@b.com") for i in range(3)]


@pytest.fixture
def published(monkeypatch):
    """What accept_batch publishes, recorded instead of sent to the broker."""
    calls = []
    monkeypatch.setattr(batches, "publish_batch", lambda ref, total: calls.append((ref, total)))
    return calls


def test_the_chord_settles_every_item_then_aggregates():
    chord = batches.batch_chord(BatchRef("acme", "b-1"), range(3))

    assert [t.args for t in chord.tasks] == [("acme", "b-1", i) for i in range(3)]
    assert {t.task for t in chord.tasks} == {"payouts.settle"}
    assert (chord.body.task, chord.body.args) == ("payouts.aggregate", ("acme", "b-1"))


def test_a_new_batch_is_published_once_and_opened(store, published, uid):
    ref = BatchRef("batches-tests", f"new-{uid}")

    assert batches.accept_batch(store, ref, fingerprint({"b": uid}), orders(uid))
    assert not batches.accept_batch(store, ref, fingerprint({"b": uid}), orders(uid))  # replay

    assert published == [(ref, 3)]
    assert store.batch_state(ref) == "processing"


def test_reusing_held_external_ids_with_other_terms_writes_nothing(store, published, uid):
    client = "batches-tests"
    batches.accept_batch(store, BatchRef(client, f"a-{uid}"), fingerprint({"a": uid}), orders(uid))
    store.begin_settlement(BatchRef(client, f"a-{uid}"), 0, 6)  # e0 is now in flight

    with pytest.raises(ExternalIdReused) as refused:
        batches.accept_batch(store, BatchRef(client, f"b-{uid}"), fingerprint({"b": uid}),
                             orders(uid, amount=999))

    assert refused.value.conflicts == [(0, f"batch a-{uid} item 0")]
    assert store.report(BatchRef(client, f"b-{uid}")) is None
    assert len(published) == 1
