"""Three-way reconciliation: Redis, the provider and the ledger (real Redis, real PostgreSQL, a
real archiver pass). Each wrong ledger row is written literally and must be reported; archive lag
must not be."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from payouts_core.ledger.archiver import Archiver
from payouts_core.provider.simulated import SimulatedPixProvider
from payouts_core.reconcile import LedgerCheck, reconcile
from payouts_core.store import OUTBOX, BatchRef, PayoutStore
from payouts_devstack import free_port
from tests.core.test_reconcile import settle_directly

CLIENT = "reconcile-tests"





@pytest.fixture
def store(own_redis):
    return PayoutStore(own_redis)


@pytest.fixture
def provider(own_redis):
    return SimulatedPixProvider(own_redis, ispb="13935893")


@pytest.fixture
def archive(own_redis, ledger_db):
    archiver = Archiver(own_redis, ledger_db)

    def drain() -> None:
        while archiver.drain_once():
            pass
    yield drain
    archiver.close()


@pytest.fixture
def check(ledger_db):
    return LedgerCheck(ledger_db, archive_wait_s=0)


def execute(url: str, sql: str, *params) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).rowcount


def kinds(found) -> list[tuple[str, str | None]]:
    return sorted((d.kind, d.external_id) for d in found)


def settled(store, provider, archive, uid: str, name: str, ids: list[str], client: str = CLIENT):
    batch_id = f"{name}-{uid}"
    settle_directly(store, provider, batch_id, [f"{i}-{uid}" for i in ids], client=client)
    archive()
    return batch_id


def test_an_archived_batch_reconciles_clean_three_ways(store, provider, archive, check, uid):
    batch_id = settled(store, provider, archive, uid, "clean", ["a", "b", "a"])
    assert reconcile(store, provider, batch_id, ledger=check) == []


def test_a_ledger_item_with_another_outcome_is_reported(store, provider, archive, check, ledger_db, uid):
    batch_id = settled(store, provider, archive, uid, "wrong", ["a", "b"])
    execute(ledger_db, """UPDATE items SET status = 'failed', e2e_id = NULL, failure_code = 'AC03'
                          WHERE client = %s AND batch_id = %s AND idx = 1""", CLIENT, batch_id)

    found = reconcile(store, provider, batch_id, ledger=check)

    assert kinds(found) == [("ledger_differs", f"b-{uid}")]
    assert "status: Redis 'paid', ledger 'failed'" in found[0].detail
    assert "e2e_id" in found[0].detail and "failure_code: Redis None, ledger 'AC03'" in found[0].detail


def test_a_report_entry_that_differs_elsewhere_is_reported(store, provider, archive, check, ledger_db, uid):
    batch_id = settled(store, provider, archive, uid, "entry", ["a"])
    execute(ledger_db, """UPDATE items SET detail = jsonb_set(detail, '{attempts}', '7')
                          WHERE client = %s AND batch_id = %s""", CLIENT, batch_id)
    found = reconcile(store, provider, batch_id, ledger=check)
    assert kinds(found) == [("ledger_differs", f"a-{uid}")] and "attempts" in found[0].detail


def test_a_missing_item_and_a_missing_event_are_reported(store, provider, archive, check, ledger_db, uid):
    batch_id = settled(store, provider, archive, uid, "gone", ["a", "b"])
    execute(ledger_db, "DELETE FROM events WHERE client = %s AND batch_id = %s AND idx = 1",
            CLIENT, batch_id)
    execute(ledger_db, "DELETE FROM items WHERE client = %s AND batch_id = %s AND idx = 1",
            CLIENT, batch_id)

    assert kinds(reconcile(store, provider, batch_id, ledger=check)) == [
        ("ledger_events_mismatch", None), ("ledger_missing_item", f"b-{uid}")]


def test_a_replayed_event_written_twice_would_be_reported(store, provider, archive, check, ledger_db, uid):
    """The key forbids a second row for one (seq, idx); an event under a made-up seq is a count
    the batch never had."""
    batch_id = settled(store, provider, archive, uid, "twice", ["a"])
    execute(ledger_db, """INSERT INTO events (client, batch_id, seq, idx, type, at)
                          SELECT client, batch_id, seq + 1000, idx, type, at FROM events
                          WHERE client = %s AND batch_id = %s AND type = 'paid'""", CLIENT, batch_id)
    assert kinds(reconcile(store, provider, batch_id, ledger=check)) == [("ledger_events_mismatch", None)]


def test_a_missing_batch_and_wrong_counters_are_reported(store, provider, archive, check, ledger_db, uid):
    missing = settled(store, provider, archive, uid, "nobatch", ["a"])
    counted = settled(store, provider, archive, uid, "counters", ["a"])
    execute(ledger_db, "DELETE FROM batches WHERE client = %s AND batch_id = %s", CLIENT, missing)
    execute(ledger_db, "UPDATE batches SET failed = 1 WHERE client = %s AND batch_id = %s",
            CLIENT, counted)

    assert kinds(reconcile(store, provider, missing, ledger=check)) == [("ledger_missing_batch", None)]
    assert kinds(reconcile(store, provider, counted, ledger=check)) == [("ledger_differs", None)]


def test_archive_lag_is_waited_for_not_reported(store, provider, archive, ledger_db, uid):
    batch_id = f"lag-{uid}"
    settle_directly(store, provider, batch_id, [f"a-{uid}", f"b-{uid}"])
    assert store.client.xlen(OUTBOX) > 0  # nothing archived yet
    late = threading.Timer(0.5, archive)  # the archiver takes it while reconcile waits
    late.start()
    try:
        assert reconcile(store, provider, batch_id, ledger=LedgerCheck(ledger_db, 30)) == []
    finally:
        late.join()


def test_a_stuck_archive_is_reported_behind_not_as_missing_rows(store, provider, archive, ledger_db, uid):
    archive()  # earlier tests' leftovers
    batch_id = f"stuck-{uid}"
    settle_directly(store, provider, batch_id, [f"a-{uid}"])

    found = reconcile(store, provider, batch_id, ledger=LedgerCheck(ledger_db, 0.2))

    assert kinds(found) == [("ledger_behind", None)]
    assert "is the archiver running" in found[0].detail
    archive()
    assert reconcile(store, provider, batch_id, ledger=LedgerCheck(ledger_db, 0)) == []


def test_a_batch_only_the_ledger_holds_is_checked_against_the_provider(
        store, provider, archive, check, ledger_db, uid):
    batch_id = settled(store, provider, archive, uid, "retired", ["a", "b"])
    ref = BatchRef(CLIENT, batch_id)
    assert store.retire(ref, store.retention_facts(ref)["events"])  # the retention step
    assert not store.batch_exists(ref)
    assert reconcile(store, provider, batch_id, ledger=check) == []

    execute(ledger_db, """UPDATE items SET e2e_id = 'E00000000202601010000AAAAAAAAAAA'
                          WHERE client = %s AND batch_id = %s AND idx = 0""", CLIENT, batch_id)
    assert kinds(reconcile(store, provider, batch_id, ledger=check)) == [
        ("ledger_paid_without_transfer", f"a-{uid}")]
    with pytest.raises(KeyError):
        reconcile(store, provider, batch_id)  # without the ledger: unknown, as before


def test_another_clients_wrong_row_is_not_this_clients_discrepancy(
        store, provider, archive, check, ledger_db, uid):
    """Two clients, one batch id: a wrong row of one is reported in its scope only."""
    settled(store, provider, archive, uid, "shared", ["a"], client="acme")
    batch_id = settled(store, provider, archive, uid, "shared", ["a"], client="globex")
    execute(ledger_db, "UPDATE items SET status = 'failed' WHERE client = 'acme' AND batch_id = %s",
            batch_id)

    assert reconcile(store, provider, batch_id, client="globex", ledger=check) == []
    assert [(d.client, d.kind) for d in reconcile(store, provider, batch_id, client="acme",
                                                  ledger=check)] == [("acme", "ledger_differs")]


def test_the_cli_compares_the_ledger_and_exits_1(store, provider, archive, ledger_db, own_redis_url, uid):
    batch_id = settled(store, provider, archive, uid, "cli", ["a"])
    env = {**os.environ, "REDIS_URL": own_redis_url, "DATABASE_URL": ledger_db}
    payouts = str(Path(sys.executable).with_name("payouts"))
    run = [payouts, "reconcile", batch_id, "--json", "--archive-wait", "5"]
    clean = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    execute(ledger_db, "UPDATE items SET e2e_id = 'E-other' WHERE batch_id = %s", batch_id)
    wrong = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)

    assert clean.returncode == 0 and json.loads(clean.stdout) == [], clean.stderr
    assert wrong.returncode == 1, wrong.stderr
    assert [d["kind"] for d in json.loads(wrong.stdout)] == ["ledger_differs"]
    down = subprocess.run([*run, "--archive-wait", "0"], capture_output=True, text=True, timeout=60,
                          env={**env, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x"})
    assert down.returncode == 2 and "cannot reach the ledger" in down.stderr
