"""Accepting a batch and building its one chord, in-process on the real store."""

from __future__ import annotations

import pytest

import payouts_tasks.batches as batches
from payouts_core.store import BatchRef, ExternalIdReused, Order, batch_keys, fingerprint


def orders(uid: str, amount: int = 100) -> list[Order]:
    return [Order(i, f"e{i}-{uid}", "u", amount, "a@b.com", "a***@b.com") for i in range(3)]


@pytest.fixture
def published(monkeypatch):
    """What accept_batch asks to publish, recorded instead of sent to the broker."""
    calls = []
    monkeypatch.setattr(batches, "request_publishing",
                        lambda ref, total, lease: calls.append((ref, total, lease)))
    return calls


def test_the_chord_settles_every_item_then_aggregates():
    chord = batches.batch_chord(BatchRef("acme", "b-1"), range(3))

    assert [t.args for t in chord.tasks] == [("acme", "b-1", i) for i in range(3)]
    assert {t.task for t in chord.tasks} == {"payouts.settle"}
    assert (chord.body.task, chord.body.args) == ("payouts.aggregate", ("acme", "b-1"))


def test_a_new_batch_asks_for_publishing_once_and_stays_accepting_until_then(store, published, uid):
    ref = BatchRef("batches-tests", f"new-{uid}")

    assert batches.accept_batch(store, ref, fingerprint({"b": uid}), orders(uid))
    assert not batches.accept_batch(store, ref, fingerprint({"b": uid}), orders(uid))  # replay

    [(asked, total, _lease)] = published
    assert (asked, total) == (ref, 3)
    assert store.batch_state(ref) == "accepting"


def test_the_publish_task_opens_publishes_and_marks_once(store, published, monkeypatch, uid):
    chords = []
    monkeypatch.setattr(batches, "publish_batch", lambda ref, total: chords.append((ref, total)))
    ref = BatchRef("batches-tests", f"pub-{uid}")
    batches.accept_batch(store, ref, fingerprint({"p": uid}), orders(uid))
    [(_, _, lease)] = published

    assert batches.publish.run(ref.client, ref.batch_id, 3, "not-the-lease") == "skipped"
    assert batches.publish.run(ref.client, ref.batch_id, 3, lease) == "published"
    assert batches.publish.run(ref.client, ref.batch_id, 3, lease) == "skipped"  # a redelivery

    assert chords == [(ref, 3)]
    assert store.batch_state(ref) == "processing"


def test_a_publish_message_that_outlived_its_lease_publishes_nothing(store, published, monkeypatch,
                                                                      redis_client, uid):
    """The API's publish message waited past the 60 s lease (a long queue); a replay took the
    batch over and published it. The late message must not publish a second chord."""
    chords = []
    monkeypatch.setattr(batches, "publish_batch", lambda ref, total: chords.append((ref, total)))
    ref = BatchRef("batches-tests", f"late-{uid}")
    batches.accept_batch(store, ref, fingerprint({"l": uid}), orders(uid))
    [(_, _, lease)] = published
    redis_client.delete(batch_keys(ref)[3])  # the lease expired

    assert batches.publish_if_abandoned(store, ref, 3)  # the replay or the sweeper takes over
    assert batches.publish.run(ref.client, ref.batch_id, 3, lease) == "skipped"  # the late one

    assert chords == [(ref, 3)]  # one chord


def test_reusing_held_external_ids_with_other_terms_writes_nothing(store, published, uid):
    client = "batches-tests"
    batches.accept_batch(store, BatchRef(client, f"a-{uid}"), fingerprint({"a": uid}), orders(uid))
    store.open_batch(BatchRef(client, f"a-{uid}"), published[0][2])  # as the publish task does
    store.begin_settlement(BatchRef(client, f"a-{uid}"), 0, 6)  # e0 is now in flight

    with pytest.raises(ExternalIdReused) as refused:
        batches.accept_batch(store, BatchRef(client, f"b-{uid}"), fingerprint({"b": uid}),
                             orders(uid, amount=999))

    assert refused.value.conflicts == [(0, f"batch a-{uid} item 0")]
    assert store.report(BatchRef(client, f"b-{uid}")) is None
    assert len(published) == 1
