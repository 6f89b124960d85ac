"""The ledger's schema: migrations are idempotent, and its money constraint says what the
Python rule says."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from payouts_core.ledger.schema import SchemaOutdated, check_schema, current_revision, head_revision, upgrade
from payouts_core.rules import paid_at_most_once
from tests.conftest import wait_for

MIGRATION_LOCK = 726354  # migrations/env.py


@pytest.fixture(scope="module")
def fresh_db(ledger_url):
    name = f"schema_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ledger_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield ledger_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(ledger_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_an_unmigrated_database_is_refused_then_upgraded_twice(fresh_db):
    with pytest.raises(SchemaOutdated, match="payouts db upgrade"):
        check_schema(fresh_db)
    assert upgrade(fresh_db) == (None, head_revision())
    assert upgrade(fresh_db) == (head_revision(), head_revision())  # a second run changes nothing
    check_schema(fresh_db)
    assert current_revision(fresh_db) == head_revision()


@pytest.fixture
def empty_db(ledger_url):
    name = f"queued_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ledger_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name, ledger_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(ledger_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_runs_queued_on_the_lock_report_what_they_found_under_it(ledger_url, empty_db):
    """Three `payouts db upgrade` wait on the migration lock together: one migrates and says so,
    the other two find the schema already there (each read it before the lock, and all three
    said "none -> 0001")."""
    name, url = empty_db
    payouts = str(Path(sys.executable).with_name("payouts"))

    def queued() -> int:
        with psycopg.connect(ledger_url) as conn:
            return conn.execute("""SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                                   WHERE l.locktype = 'advisory' AND l.objid = %s AND NOT l.granted
                                   AND d.datname = %s""", (MIGRATION_LOCK, name)).fetchone()[0]

    with psycopg.connect(url) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        runs = [subprocess.Popen([payouts, "db", "upgrade"], env={**os.environ, "DATABASE_URL": url},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(3)]
        wait_for(lambda: queued() == 3, 60, "three runs waiting on the migration lock")
        holder.rollback()  # the lock goes with the transaction
    answers = [run.communicate(timeout=60) for run in runs]

    assert [run.returncode for run in runs] == [0, 0, 0], [err[-500:] for _, err in answers]
    head = head_revision()
    assert sorted(out for out, _ in answers) == [
        f"ledger schema already at {head}\n", f"ledger schema already at {head}\n",
        f"ledger schema upgraded: none -> {head}\n"]


ROW = st.tuples(st.sampled_from(["acme", "globex"]), st.sampled_from(["x", "y", "z"]),
                st.sampled_from(["paid", "failed", "duplicate"]))


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(ROW, max_size=8))
def test_the_paid_once_index_agrees_with_the_rule(ledger_url, rows):
    """Each row is accepted by PostgreSQL exactly when the Python rule still holds with it."""
    batch = uuid.uuid4().hex
    kept: list[tuple[str, str, str]] = []
    with psycopg.connect(ledger_url) as conn:
        for client in ("acme", "globex"):
            conn.execute("""INSERT INTO batches (client, batch_id, fingerprint, state, total,
                            created_at, submitted_by) VALUES (%s, %s, 'f', 'completed', 8, now(), %s)""",
                         (client, batch, client))
        for idx, (client, external_id, status) in enumerate(rows):
            expected = paid_at_most_once([*kept, (client, external_id, status)])
            try:
                with conn.transaction():
                    conn.execute(
                        """INSERT INTO items (client, batch_id, idx, external_id, user_id,
                           amount_cents, pix_key_masked, terms, status, detail, updated_at)
                           VALUES (%s, %s, %s, %s, 'u', 1, 'k', 't', %s, '{}', now())""",
                        (client, batch, idx, external_id, status))
                accepted = True
            except psycopg.errors.UniqueViolation:
                accepted = False
            assert accepted == expected, (kept, (client, external_id, status))
            if accepted:
                kept.append((client, external_id, status))
        conn.rollback()
