"""Reads of one large batch while Redis holds it and after retention, from the ledger (issue 18).

`python -m bench.ledger_reads [ITEMS]` (default 10,000): a private Redis and PostgreSQL, one
batch settled through the store's own scripts (85 % paid, 10 % failed, 5 % duplicates),
archived by the archiver (in-process passes), then each read through the real Flask app
(in-process WSGI, the whole streamed body read), 7 runs each: first while Redis holds the batch,
then after `PayoutStore.retire`. Prints the median and the slowest run per read.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import redis
from rich.console import Console
from rich.table import Table

from payouts_core.ledger.archiver import Archiver
from payouts_core.ledger.retention import ledger_holds
from payouts_core.ledger.schema import upgrade
from payouts_core.settings import Settings, key_digest
from payouts_core.store import BatchRef, Order, PayoutStore, fingerprint
from payouts_devstack import free_port, start_redis
from payouts_devstack.postgres_server import database_url, start_postgres

RUNS = 7
KEY = "bench-key-0123456789"


def settle(store: PayoutStore, ref: BatchRef, items: int) -> None:
    firsts = items - items // 20  # the last 5 % repeat earlier payouts (same terms): duplicates
    orders = []
    for i in range(items):
        n = i if i < firsts else i - firsts
        orders.append(Order(i, f"creator-{n}", f"user-{n}", 1000 + n % 97,
                            f"creator{n}@example.com", "c***@example.com", "email"))
    store.create_batch(ref, fingerprint({"b": ref.batch_id}), orders, lease_token="t")
    store.open_batch(ref, "t")
    for order in orders:
        decision = store.begin_settlement(ref, order.index, 6)
        if decision.action != "settle":
            continue  # a duplicate (decided by the script itself)
        if order.index % 10 == 3:
            store.record_failed(ref, order.index, "AC03", "invalid account")
        else:
            store.record_paid(ref, order.index, f"E{order.index:031d}", decision.claim_generation)
    assert store.complete_batch(ref)[0] == "completed"


def timed(client, path: str, headers: dict) -> tuple[float, float, int]:
    runs, size = [], 0
    for _ in range(RUNS):
        started = time.perf_counter()
        response = client.get(path, headers=headers)
        size = len(response.get_data())  # the whole streamed body
        runs.append(time.perf_counter() - started)
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return statistics.median(runs), max(runs), size


def main(items: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-ledger-reads-"))
    redis_port, pg_port = free_port(), free_port()
    redis_proc = start_redis(redis_port, workdir / "redis", appendonly=False)
    pg_proc = start_postgres(pg_port, workdir / "postgres")
    try:
        url = database_url(pg_port)
        upgrade(url)
        r = redis.Redis(port=redis_port)
        store, ref = PayoutStore(r), BatchRef("bench", "big")
        settle(store, ref, items)
        archiver = Archiver(r, url)
        while archiver.drain_once():
            pass
        archiver.close()
        facts = store.retention_facts(ref)
        assert ledger_holds(url, ref, facts), "the ledger does not hold the batch"

        from payouts_api import create_app  # noqa: PLC0415 - after the environment is known

        settings = replace(Settings.from_env({"REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
                                              "DATABASE_URL": url, "PAYOUTS_ENV": "test",
                                              "PAYOUTS_RATELIMIT_ENABLED": "false",
                                              "PAYOUTS_API_KEYS": f"bench:{KEY}"}),
                           api_keys=(("bench", key_digest(KEY)),))
        client = create_app({"TESTING": True}, settings=settings).test_client()
        auth = {"Authorization": f"Bearer {KEY}"}
        reads = [("report JSON", "/api/payouts/big", auth),
                 ("CSV", "/api/payouts/big", {**auth, "Accept": "text/csv"}),
                 ("failed items page (100)", "/api/payouts/big/items?status=failed&limit=100", auth),
                 ("item story", "/api/payouts/big/items/creator-7", auth),
                 ("history page", "/api/payouts", auth)]
        rows = [(name, "Redis", *timed(client, path, headers)) for name, path, headers in reads]
        assert store.retire(ref, facts["events"])
        rows += [(name, "ledger", *timed(client, path, headers)) for name, path, headers in reads]
        today = time.strftime("%Y-%m-%d", time.gmtime())
        rows.append(("daily report (1 day)", "ledger",
                     *timed(client, f"/api/reports/daily?from={today}&to={today}", auth)))
    finally:
        pg_proc.stop(grace=10)
        redis_proc.stop(grace=10)

    table = Table(title=f"Reads of one {items:,}-item batch (in-process WSGI, {RUNS} runs each)")
    for column in ("read", "from", "median ms", "slowest ms", "bytes"):
        table.add_column(column, justify="left" if column in ("read", "from") else "right")
    for name, source, median, slowest, size in rows:
        table.add_row(name, source, f"{median * 1000:.1f}", f"{slowest * 1000:.1f}", f"{size:,}")
    Console().print(table)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
