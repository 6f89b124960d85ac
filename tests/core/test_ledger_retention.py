"""Retention: a completed batch leaves Redis only once the ledger holds all of it, and its
external_ids stay paid (or failed, with their generation) forever as archived claims."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from urllib.parse import quote

import psycopg
import pytest

from payouts_core.ledger.archiver import Archiver
from payouts_core.ledger.retention import ledger_holds, paid_item
from payouts_core.store import (
    ARCHIVED_CLAIMS,
    OUTBOX,
    BatchRef,
    Order,
    PayoutStore,
    batch_keys,
    claim_key,
    client_batches_key,
    fingerprint,
)
from payouts_devstack import free_port

MAX_ATTEMPTS = 6




@pytest.fixture
def store(own_redis):
    return PayoutStore(own_redis)


@pytest.fixture
def archive(own_redis, ledger_db):
    archiver = Archiver(own_redis, ledger_db)

    def drain() -> None:
        while archiver.drain_once():
            pass
    yield drain
    archiver.close()


def new_batch(store, batch_id: str, external_ids: list[str], amount: int = 100,
              client: str = "acme") -> BatchRef:
    ref = BatchRef(client, batch_id)
    orders = [Order(i, e, "user", amount, "a@b.com", "a***@b.com") for i, e in enumerate(external_ids)]
    assert store.create_batch(ref, fingerprint({"b": batch_id}), orders, lease_token="l")[0]
    assert store.open_batch(ref, "l")
    return ref


def settle_all(store, ref: BatchRef, outcomes: list[str]) -> None:
    """Each item paid ("E...") or failed ("AC03"), then the batch completed."""
    for index, outcome in enumerate(outcomes):
        decision = store.begin_settlement(ref, index, MAX_ATTEMPTS)
        if outcome.startswith("E"):
            store.record_paid(ref, index, outcome, decision.claim_generation)
        else:
            store.record_failed(ref, index, outcome, "rejected")
    assert store.complete_batch(ref)[0] == "completed"


# What an archived claim keeps of the terms (amount 100, a@b.com, user): 8 bytes of the digest.
TAG = bytes.fromhex(hashlib.sha256(b"100\x1fa@b.com\x1fuser").hexdigest()[:16])


def archived(store, client: str, external_id: str) -> bytes | None:
    """The archived claim's value, found as lib.lua (archived claims) files it (written out here)."""
    key = claim_key(client, external_id)
    digest = hashlib.sha1(key.encode()).hexdigest()
    return store.client.hget(f"{ARCHIVED_CLAIMS}{quote(client, safe='')}:{digest[:3]}",
                             bytes.fromhex(digest[3:27]))


def retire(store, ledger_db, ref: BatchRef) -> bool:
    facts = store.retention_facts(ref)
    return ledger_holds(ledger_db, ref, facts) and store.retire(ref, facts["events"])


def test_a_batch_leaves_redis_only_once_the_ledger_holds_it(store, archive, ledger_db, uid):
    ref = new_batch(store, f"keep-{uid}", [f"k-{uid}", f"f-{uid}"])
    settle_all(store, ref, ["E-k", "AC03"])
    facts = store.retention_facts(ref)
    assert not ledger_holds(ledger_db, ref, facts)  # nothing archived yet
    assert store.client.exists(batch_keys(ref)[0])

    archive()
    assert ledger_holds(ledger_db, ref, facts)
    assert store.retire(ref, facts["events"])

    assert not any(store.client.exists(k) for k in batch_keys(ref))
    assert not store.client.exists(claim_key("acme", f"k-{uid}"), claim_key("acme", f"f-{uid}"))
    assert archived(store, "acme", f"k-{uid}") == b"p1" + TAG
    assert archived(store, "acme", f"f-{uid}") == b"f1" + TAG
    assert store.client.zscore(client_batches_key("acme"), ref.batch_id) is None
    assert paid_item(ledger_db, "acme", f"k-{uid}") == {"batch_id": ref.batch_id, "index": 0,
                                                         "e2e_id": "E-k"}


def test_retire_is_refused_when_the_batch_changed_after_the_check(store, archive, ledger_db, uid):
    ref = new_batch(store, f"moved-{uid}", [f"m-{uid}"])
    settle_all(store, ref, ["E-m"])
    archive()
    facts = store.retention_facts(ref)
    store.note_event(ref, 0, "webhook.delivered")  # one more event since the check
    assert not store.retire(ref, facts["events"])
    assert store.client.exists(batch_keys(ref)[0])
    assert store.client.exists(claim_key("acme", f"m-{uid}"))


def test_an_archived_payment_is_still_a_duplicate(store, archive, ledger_db, uid):
    first = new_batch(store, f"old-{uid}", [f"d-{uid}"])
    settle_all(store, first, ["E-old"])
    archive()
    assert retire(store, ledger_db, first)

    later = new_batch(store, f"new-{uid}", [f"d-{uid}"])
    decision = store.begin_settlement(later, 0, MAX_ATTEMPTS)
    assert decision.action == "archived_duplicate"
    assert decision.order == {"external_id": f"d-{uid}"}
    where = paid_item(ledger_db, "acme", f"d-{uid}")
    assert store.record_archived_duplicate(later, 0, where) == "duplicate"
    item = store.report(later)["details"][0]
    assert item["status"] == "duplicate"
    assert item["duplicate_of"] == {"batch_id": f"old-{uid}", "index": 0, "e2e_id": "E-old"}
    # Two batches with the same archived id: both duplicates, the archived claim untouched.
    again = new_batch(store, f"again-{uid}", [f"d-{uid}"])
    assert store.begin_settlement(again, 0, MAX_ATTEMPTS).action == "archived_duplicate"
    assert not store.client.exists(claim_key("acme", f"d-{uid}"))


def test_an_archived_payment_with_other_terms_is_a_reuse(store, archive, ledger_db, uid):
    first = new_batch(store, f"t1-{uid}", [f"r-{uid}"], amount=100)
    settle_all(store, first, ["E-t1"])
    archive()
    assert retire(store, ledger_db, first)

    reuse = [Order(0, f"r-{uid}", "user", 999, "a@b.com", "a***@b.com")]
    same = [Order(0, f"r-{uid}", "user", 100, "a@b.com", "a***@b.com")]
    assert store.conflicting_claims("acme", reuse) == [(0, "an archived payment")]
    assert store.conflicting_claims("acme", same) == []
    assert store.conflicting_claims("globex", reuse) == []  # another client's id is unrelated

    later = new_batch(store, f"t2-{uid}", [f"r-{uid}"], amount=999)
    assert store.begin_settlement(later, 0, MAX_ATTEMPTS).action == "reused"
    item = store.report(later)["details"][0]
    assert (item["status"], item["failure_code"]) == ("failed", "EXTERNAL_ID_REUSED")
    assert "an archived payment" in item["failure_reason"]


def test_an_archived_failure_is_paid_later_under_a_new_key(store, archive, ledger_db, uid):
    first = new_batch(store, f"f1-{uid}", [f"x-{uid}"])
    settle_all(store, first, ["AC03"])
    archive()
    assert retire(store, ledger_db, first)

    assert archived(store, "acme", f"x-{uid}") == b"f1" + TAG
    later = new_batch(store, f"f2-{uid}", [f"x-{uid}"])
    decision = store.begin_settlement(later, 0, MAX_ATTEMPTS)
    assert (decision.action, decision.claim_generation) == ("settle", 2)
    # The archived entry became the full claim again: one form at a time.
    assert archived(store, "acme", f"x-{uid}") is None
    assert store.client.hget(claim_key("acme", f"x-{uid}"), "gen") == b"2"
    store.record_paid(later, 0, "E-f2", 2)
    assert store.report(later)["details"][0]["status"] == "paid"


def test_a_claim_held_by_a_later_batch_is_not_archived(store, archive, ledger_db, uid):
    """The retired batch failed the id, a later batch holds it now: that claim stays whole."""
    first = new_batch(store, f"h1-{uid}", [f"h-{uid}"])
    settle_all(store, first, ["AC03"])
    later = new_batch(store, f"h2-{uid}", [f"h-{uid}"])
    assert store.begin_settlement(later, 0, MAX_ATTEMPTS).action == "settle"
    archive()
    assert retire(store, ledger_db, first)
    assert store.client.hget(claim_key("acme", f"h-{uid}"), "state") == b"inflight"


def test_the_outbox_is_empty_after_the_archive(store, archive, own_redis):
    archive()
    assert own_redis.xlen(OUTBOX) == 0


def _retention_read_in_a_child(ledger_db: str, external_id: str, answers) -> None:
    from payouts_core.ledger.reads import shared

    found = paid_item(ledger_db, "acme", external_id)
    answers.put((found, shared(ledger_db)._pid == os.getpid()))
    shared(ledger_db).close()


def test_retention_reads_go_through_the_process_ledger_pool(store, archive, ledger_db, uid):
    """ledger_holds and paid_item take a connection of the process's reader pool (reads.shared:
    one connection setup and timeout policy), and a forked child (a prefork worker) opens its own
    instead of using its parent's connection."""
    from payouts_core.ledger.reads import shared

    ref = new_batch(store, f"pool-{uid}", [f"p-{uid}"])
    settle_all(store, ref, ["E-p"])
    archive()
    requests = shared(ledger_db)._get_pool().get_stats().get("requests_num", 0)

    assert ledger_holds(ledger_db, ref, store.retention_facts(ref))
    assert paid_item(ledger_db, "acme", f"p-{uid}")["e2e_id"] == "E-p"
    assert shared(ledger_db)._get_pool().get_stats()["requests_num"] == requests + 2

    fork = multiprocessing.get_context("fork")
    answers = fork.Queue()
    child = fork.Process(target=_retention_read_in_a_child, args=(ledger_db, f"p-{uid}", answers))
    child.start()
    found, own_pool = answers.get(timeout=30)
    child.join(timeout=30)
    assert child.exitcode == 0 and own_pool and found["e2e_id"] == "E-p"
    assert paid_item(ledger_db, "acme", f"p-{uid}")["e2e_id"] == "E-p"  # the parent's still serves


def test_an_unreachable_ledger_raises_a_psycopg_error_for_settle_and_the_sweeper():
    """Settle and the sweeper catch psycopg.Error to try again later: the pool's errors stay
    psycopg's (a pool wait past its timeout is PoolTimeout), never the API's LedgerUnavailable."""
    from payouts_core.ledger.reads import shared

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/payouts"
    try:
        with pytest.raises(psycopg.Error):
            paid_item(url, "acme", "x")
    finally:
        shared(url).close()
