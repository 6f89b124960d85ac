"""The ledger under faults (issue 18): real processes, the stack's own Redis and PostgreSQL.

Each scenario ends with every event of every batch in the ledger exactly once (the ledger's rows
per batch = the batch's own event count + one `accepted` per item, and its sequence 1..n without
a gap), nothing left in the outbox, and `payouts reconcile` (three-way) clean.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import uuid

import psycopg

from payouts_core.ledger.faults import CRASH_EXIT, MARKER
from payouts_core.ledger.schema import current_revision, head_revision
from payouts_core.store import OUTBOX, BatchRef, batch_keys
from payouts_devstack.process import ROOT
from tests.faults.stack import CLIENT, items


def rows(stack, sql: str, *params) -> list[tuple]:
    with psycopg.connect(stack.env["DATABASE_URL"], connect_timeout=5) as conn:
        return conn.execute(sql, params).fetchall()


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout} s")


def assert_ledger_exactly_once(stack, batch_ids: list[str], timeout: float = 120) -> list[dict]:
    reports = stack.assert_exactly_once(batch_ids, timeout)  # completed, reconcile (three-way) clean
    wait_for(lambda: stack.client.xlen(OUTBOX) == 0, timeout, "the outbox drained")
    for batch_id in batch_ids:
        header = stack.client.hgetall(batch_keys(BatchRef(CLIENT, batch_id))[0])
        events, total = int(header["events"]), int(header["total"])
        [(count, distinct, first, last)] = rows(
            stack, """SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM events
                      WHERE client = %s AND batch_id = %s""", CLIENT, batch_id)
        assert count == events + total, (batch_id, count, events, total)
        assert (distinct, first, last) == (events, 1, events)  # every seq, none twice
        assert rows(stack, "SELECT count(*) FROM items WHERE client = %s AND batch_id = %s",
                    CLIENT, batch_id) == [(total,)]
    return reports


def test_postgres_killed_mid_archive_and_restarted(make_stack):
    stack = make_stack()
    stack.start_postgres()
    stack.start_service()
    stack.start_archiver()
    assert stack.post("pg-killed", items("pk", 600)).status_code == 202
    stack.wait_until("pg-killed", 100)
    archived_before = wait_for(lambda: rows(stack, "SELECT count(*) FROM events")[0][0], 60,
                               "a first archive pass")

    stack.postgres.signal_group(signal.SIGKILL)  # the postmaster and every backend, mid-transaction
    stack.postgres.wait()
    # Settlement never waits on the ledger: the batch completes while PostgreSQL is dead, and the
    # outbox keeps what the archive has not taken.
    [report] = stack.wait_completed(["pg-killed"], timeout=120)
    backlog = stack.client.xlen(OUTBOX)
    stack.start_postgres_again()  # crash recovery from its WAL

    assert archived_before > 0 and backlog > 0
    assert report["successful"] == 600
    assert_ledger_exactly_once(stack, ["pg-killed"])


def test_archiver_killed_between_commit_and_acknowledgement(make_stack):
    stack = make_stack()
    stack.start_postgres()
    stack.start_service()
    assert stack.post("ack", items("ak", 300)).status_code == 202
    stack.wait_until("ack", 50)
    waiting = stack.client.xlen(OUTBOX)

    crashing = stack.start_archiver(env={"PAYOUTS_FAULT_ARCHIVER_CRASH_AFTER_COMMIT": "true"})
    assert crashing.wait(timeout=60) == CRASH_EXIT
    # Committed, not acknowledged: the rows are in the ledger and their entries still in the outbox.
    committed = rows(stack, "SELECT count(*) FROM events")[0][0]
    assert committed > 0 and stack.client.xlen(OUTBOX) >= waiting
    assert stack.client.get(MARKER) == "1"

    # The hook fires once per Redis: a restarted archiver (hook still on) replays and goes on.
    stack.start_archiver(env={"PAYOUTS_FAULT_ARCHIVER_CRASH_AFTER_COMMIT": "true"})
    [report] = assert_ledger_exactly_once(stack, ["ack"])
    assert report["successful"] == 300


def test_every_event_replayed_changes_nothing(make_stack):
    stack = make_stack()
    stack.start_postgres()
    stack.start_service()
    assert stack.post("replay", items("rp", 200)).status_code == 202
    stack.wait_completed(["replay"])
    entries = stack.client.xrange(OUTBOX)  # the batch's whole story, before any archiving
    stack.start_archiver()
    wait_for(lambda: stack.client.xlen(OUTBOX) == 0, 60, "the outbox drained")
    before = rows(stack, "SELECT count(*), max(last_seq) FROM items")

    for _, fields in entries:  # every event delivered again, in order, as after a lost XDEL
        stack.client.xadd(OUTBOX, fields)

    assert_ledger_exactly_once(stack, ["replay"])
    assert rows(stack, "SELECT count(*), max(last_seq) FROM items") == before


def test_migration_run_twice_and_concurrently(make_stack):
    stack = make_stack()
    stack.start_postgres()
    server = stack.env["DATABASE_URL"].rsplit("/", 1)[0]
    names = [f"twice_{uuid.uuid4().hex[:6]}", f"together_{uuid.uuid4().hex[:6]}"]
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    twice, together = (f"{server}/{name}" for name in names)

    def upgrade(url: str) -> subprocess.CompletedProcess:
        return subprocess.run(["payouts", "db", "upgrade"], env={**stack.env, "DATABASE_URL": url},
                              capture_output=True, text=True, timeout=120, cwd=ROOT)

    first, second = upgrade(twice), upgrade(twice)
    concurrent: list[subprocess.CompletedProcess] = []
    runners = [threading.Thread(target=lambda: concurrent.append(upgrade(together))) for _ in range(3)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join()

    assert first.returncode == 0 and "none -> " in first.stdout, first.stderr
    assert second.returncode == 0 and "already at" in second.stdout, second.stderr
    # Unserialized, the second CREATE TABLE would fail ("already exists"): all three succeed,
    # and each reports the revision it found under the lock: one migrated, two found it done.
    assert [c.returncode for c in concurrent] == [0, 0, 0], [c.stderr[-500:] for c in concurrent]
    head = head_revision()
    assert sorted(c.stdout for c in concurrent) == [
        f"ledger schema already at {head}\n", f"ledger schema already at {head}\n",
        f"ledger schema upgraded: none -> {head}\n"]
    assert current_revision(twice) == current_revision(together) == head_revision()
    with psycopg.connect(together) as conn:
        assert conn.execute("SELECT count(*) FROM ledger_schema_version").fetchone() == (1,)

    # The concurrently migrated database serves as the ledger of a whole run.
    stack.env["DATABASE_URL"] = together
    stack.start_service()
    stack.start_archiver()
    assert stack.post("migrated", items("mg", 100)).status_code == 202
    assert_ledger_exactly_once(stack, ["migrated"])


def test_redis_restarted_with_a_backlog_in_the_outbox(make_stack):
    stack = make_stack()
    stack.start_postgres()
    stack.start_service()
    assert stack.post("backlog", items("bl", 300)).status_code == 202
    stack.wait_completed(["backlog"])
    backlog = stack.client.xrange(OUTBOX)
    assert backlog  # no archiver yet: the whole story waits in the outbox

    stack.stop_redis()  # SIGTERM: the append-only file is flushed, as in a Redis restart
    stack.start_redis_again()
    assert wait_for(lambda: stack.client.xrange(OUTBOX), 30, "the outbox back") == backlog
    stack.start_archiver()

    [report] = assert_ledger_exactly_once(stack, ["backlog"])
    assert report["successful"] == 300


def test_the_service_starts_while_postgres_is_down_and_the_archive_catches_up(make_stack):
    stack = make_stack()
    stack.start_postgres()
    stack.stop_postgres()
    stack.start_service()  # the API and the worker start: settlement never waits on the ledger
    archiver = stack.start_archiver()  # waits for PostgreSQL instead of exiting
    assert stack.post("pg-down", items("pd", 100)).status_code == 202
    stack.wait_completed(["pg-down"])
    archiver.check_alive()
    assert stack.client.xlen(OUTBOX) > 0

    stack.start_postgres_again()
    assert_ledger_exactly_once(stack, ["pg-down"])
