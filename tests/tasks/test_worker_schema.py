"""A worker started against an older ledger schema refuses to start, naming the command to run,
and the launcher does not restart it (a restart cannot help): real processes, real PostgreSQL."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from payouts_devstack import Stack


@pytest.fixture
def unmigrated_url(ledger_url):
    name = f"unmigrated_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ledger_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield ledger_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(ledger_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.mark.parametrize("processes", [1, 2])
def test_a_worker_refuses_an_older_schema(tmp_path, unmigrated_url, processes):
    with Stack(tmp_path) as stack:
        worker = stack.start_worker(env={"DATABASE_URL": unmigrated_url}, wait=False,
                                    processes=processes)
        code = worker.wait(timeout=60)
        log = worker.log_path.read_text()
    assert code == 64, log
    assert "payouts db upgrade" in log


def test_the_archiver_refuses_an_older_schema(tmp_path, unmigrated_url):
    with Stack(tmp_path) as stack:
        archiver = stack.start_archiver(env={"DATABASE_URL": unmigrated_url})
        code = archiver.wait(timeout=60)
        log = archiver.log_path.read_text()
    assert code == 1, log
    assert "payouts db upgrade" in log
