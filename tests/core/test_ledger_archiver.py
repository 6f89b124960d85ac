"""The outbox and the archiver on a real Redis and a real PostgreSQL: every state change is one
event, archived once, in order per item, whatever is replayed."""

from __future__ import annotations

import psycopg
import pytest

from payouts_core.ledger.archiver import Archiver
from payouts_core.store import OUTBOX, BatchRef, Order, PayoutStore, batch_keys, fingerprint
from payouts_devstack import free_port

MAX_ATTEMPTS = 6




@pytest.fixture
def store(own_redis):
    return PayoutStore(own_redis)


@pytest.fixture
def archiver(own_redis, ledger_db):
    archiver = Archiver(own_redis, ledger_db)
    yield archiver
    archiver.close()


def rows(url: str, sql: str, *params) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def new_batch(store, client: str, batch_id: str, external_ids: list[str], amount: int = 100) -> BatchRef:
    ref = BatchRef(client, batch_id)
    orders = [Order(i, e, "user", amount, "a@b.com", "a***@b.com", "email")
              for i, e in enumerate(external_ids)]
    assert store.create_batch(ref, fingerprint({"b": batch_id, "e": external_ids}), orders,
                              lease_token="lease")[0]
    assert store.open_batch(ref, "lease")
    return ref


def drain(archiver) -> int:
    total = 0
    while n := archiver.drain_once():
        total += n
    return total


def test_an_items_story_is_archived_in_order(store, archiver, ledger_db, uid):
    ref = new_batch(store, "acme", f"story-{uid}", [f"a-{uid}", f"b-{uid}", f"a-{uid}"])
    first = store.begin_settlement(ref, 0, MAX_ATTEMPTS)
    store.note_event(ref, 0, "provider_error", 1, "AB03", {"next": "retry"})
    second = store.begin_settlement(ref, 0, MAX_ATTEMPTS)
    store.record_paid(ref, 0, "E-paid-0", second.claim_generation, {"duration_ms": 12.5})
    store.begin_settlement(ref, 1, MAX_ATTEMPTS)
    store.record_failed(ref, 1, "AC03", "invalid account")
    assert store.begin_settlement(ref, 2, MAX_ATTEMPTS).action == "duplicate"
    assert store.complete_batch(ref)[0] == "completed"
    assert first.claim_generation == 1

    drain(archiver)

    story = rows(ledger_db, """SELECT type, attempt, code, detail FROM events WHERE client = 'acme'
                               AND batch_id = %s AND idx = 0 ORDER BY seq""", ref.batch_id)
    assert [r[0] for r in story] == ["accepted", "provider_call", "provider_error",
                                     "provider_call", "paid"]
    assert story[2][1:3] == (1, "AB03") and story[3][1] == 2
    assert story[4][3]["e2e_id"] == "E-paid-0" and story[4][3]["duration_ms"] == 12.5
    items = rows(ledger_db, """SELECT idx, status, attempts, e2e_id, failure_code,
                               detail->'duplicate_of'->>'index' FROM items WHERE client = 'acme'
                               AND batch_id = %s ORDER BY idx""", ref.batch_id)
    assert items == [(0, "paid", 2, "E-paid-0", None, None), (1, "failed", 1, None, "AC03", None),
                     (2, "duplicate", 0, None, None, "0")]
    batch = rows(ledger_db, """SELECT state, processed, successful, failed, duplicates, last_seq
                               FROM batches WHERE client = 'acme' AND batch_id = %s""", ref.batch_id)
    redis_events = int(store.client.hget(batch_keys(ref)[0], "events"))
    assert batch == [("completed", 3, 1, 1, 1, redis_events)]
    # One row per event the batch counted, plus each item's `accepted`.
    assert rows(ledger_db, "SELECT count(*) FROM events WHERE batch_id = %s", ref.batch_id) == \
        [(redis_events + 3,)]
    assert store.client.xlen(OUTBOX) == 0


def test_replayed_entries_change_nothing(store, archiver, ledger_db, uid):
    """The archiver died after its commit, before deleting the entries: they come back."""
    ref = new_batch(store, "acme", f"replay-{uid}", [f"r-{uid}"])
    decision = store.begin_settlement(ref, 0, MAX_ATTEMPTS)
    store.record_paid(ref, 0, "E-r", decision.claim_generation)
    entries = store.client.xrange(OUTBOX)
    drain(archiver)
    before = rows(ledger_db, "SELECT * FROM events WHERE batch_id = %s ORDER BY seq, idx", ref.batch_id)
    item_before = rows(ledger_db, "SELECT status, last_seq FROM items WHERE batch_id = %s", ref.batch_id)

    for _, fields in entries:
        store.client.xadd(OUTBOX, fields)
    assert drain(archiver) == len(entries)

    assert rows(ledger_db, "SELECT * FROM events WHERE batch_id = %s ORDER BY seq, idx",
                ref.batch_id) == before
    assert rows(ledger_db, "SELECT status, last_seq FROM items WHERE batch_id = %s",
                ref.batch_id) == item_before == [("paid", 4)]


def test_an_old_event_replayed_late_does_not_move_an_item_back(store, archiver, ledger_db, uid):
    ref = new_batch(store, "acme", f"late-{uid}", [f"l-{uid}"])
    store.begin_settlement(ref, 0, MAX_ATTEMPTS)
    call = store.client.xrange(OUTBOX)[-1]
    store.record_failed(ref, 0, "AC03", "invalid account")
    drain(archiver)
    store.client.xadd(OUTBOX, call[1])  # the provider_call event again, after the outcome
    drain(archiver)
    assert rows(ledger_db, "SELECT status FROM items WHERE batch_id = %s", ref.batch_id) == [("failed",)]


def test_two_clients_equal_ids_are_two_ledgers(store, archiver, ledger_db, uid):
    for client in ("acme", "globex"):
        ref = new_batch(store, client, f"same-{uid}", [f"x-{uid}"])
        decision = store.begin_settlement(ref, 0, MAX_ATTEMPTS)
        store.record_paid(ref, 0, f"E-{client}", decision.claim_generation)
    drain(archiver)
    assert rows(ledger_db, """SELECT client, e2e_id FROM items WHERE batch_id = %s
                              ORDER BY client""", f"same-{uid}") == [("acme", "E-acme"),
                                                                     ("globex", "E-globex")]


def test_a_discarded_batch_leaves_nothing_and_its_id_can_be_posted_again(store, archiver, ledger_db, uid):
    ref = BatchRef("acme", f"gone-{uid}")
    orders = [Order(0, f"g-{uid}", "u", 100, "a@b.com", "a***@b.com")]
    store.create_batch(ref, fingerprint({"v": 1}), orders, lease_token="one")
    assert store.discard_batch(ref, "one")
    store.create_batch(ref, fingerprint({"v": 2}), orders, lease_token="two")
    drain(archiver)
    assert rows(ledger_db, "SELECT fingerprint FROM batches WHERE batch_id = %s", ref.batch_id) == \
        [(fingerprint({"v": 2}),)]
    assert rows(ledger_db, "SELECT type FROM events WHERE batch_id = %s AND idx = -1",
                ref.batch_id) == [("batch.accepted",)]


def test_postgres_refusing_keeps_the_entries(store, own_redis, uid):
    """Nothing is deleted from the outbox unless the ledger committed it."""
    new_batch(store, "acme", f"down-{uid}", [f"d-{uid}"])
    before = own_redis.xlen(OUTBOX)
    dead = Archiver(own_redis, f"postgresql://postgres@127.0.0.1:{free_port()}/payouts")
    with pytest.raises(psycopg.OperationalError):
        dead.drain_once()
    assert own_redis.xlen(OUTBOX) == before


def test_one_archiver_holds_the_lease(own_redis, ledger_db):
    first, second = Archiver(own_redis, ledger_db, lease_ms=5000), Archiver(own_redis, ledger_db)
    assert first.hold_lease() and first.hold_lease()
    assert not second.hold_lease()
    first.release_lease()
    assert second.hold_lease()
    second.release_lease()


def test_a_bad_entry_is_set_aside_and_the_others_archived(store, archiver, ledger_db, own_redis, uid):
    """An entry the ledger cannot take (here undecodable) never blocks the archive."""
    from payouts_core.ledger.archiver import DEAD_LETTERS

    own_redis.xadd(OUTBOX, {"e": b"{not json"})
    ref = new_batch(store, "acme", f"after-bad-{uid}", [f"ab-{uid}"])
    drain(archiver)
    assert rows(ledger_db, "SELECT count(*) FROM items WHERE batch_id = %s", ref.batch_id) == [(1,)]
    dead = own_redis.xrange(DEAD_LETTERS)
    assert dead[-1][1][b"e"] == b"{not json" and b"JSONDecodeError" in dead[-1][1][b"error"]
    assert own_redis.xlen(OUTBOX) == 0


def test_a_batch_events_attempt_and_code_are_archived(store, archiver, ledger_db, uid):
    """A webhook outcome in the batch's trail keeps its attempt and status code in the ledger,
    as item events do (they were dropped: the trail read back from the ledger lacked them)."""
    ref = new_batch(store, "acme", f"hook-{uid}", [f"h-{uid}"])
    assert store.note_event(ref, -1, "webhook.delivered", 2, "200", {"delivery_id": f"msg_{uid}"})
    drain(archiver)

    assert rows(ledger_db, """SELECT attempt, code, detail FROM events WHERE client = %s
                              AND batch_id = %s AND type = 'webhook.delivered'""", *ref) == [
        (2, "200", {"delivery_id": f"msg_{uid}"})]
