"""The ledger's numbers (issue 18), measured in one run with the other scenarios:

- settlement with the archiver running vs stopped, zero-latency and seed-profile (the outbox is
  always written: what the ledger can cost settlement is the archiver's CPU and its Redis reads);
- archive lag (state change -> committed row) while settling at the zero-latency rate: p99 from
  the archiver's own histogram (bucket bounds), and the oldest outbox entry's age sampled every
  100 ms;
- Redis bytes per item while a batch is active (MEMORY USAGE of its keys, its claims and its
  outbox events), PostgreSQL bytes per item with its events (pg_total_relation_size / items),
  and a year of 1 million payouts a month projected from both.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import psycopg
import redis

from bench.histograms import buckets, quantile_bound
from bench.report import Row
from payouts_core.ledger.backlog import outbox_backlog
from payouts_core.store import OUTBOX, BatchRef, batch_keys, claim_key
from payouts_devstack import Process, free_port

CLIENT = "bench"  # the owner of the harness's API key
PAYOUTS_PER_MONTH = 1_000_000
RETENTION_DAYS = 7


class Archive:
    """The run's archiver: started and stopped between rows, its lag histogram scraped."""

    def __init__(self, bench):
        self.bench, self.stack = bench, bench.stack
        self.port = free_port()
        self.proc: Process | None = None

    def start(self) -> None:
        if self.proc is None:
            self.proc = self.stack.start_archiver(env={"PAYOUTS_ARCHIVER_METRICS_PORT": str(self.port)})

    def stop(self) -> None:
        if self.proc is not None:
            self.stack.stop([self.proc])
            self.proc = None

    def drain(self, timeout: float = 600) -> bool:
        """Archive what earlier rows left in the outbox, so a row measures only its own batch;
        False when the archiver (or PostgreSQL) did not manage it in time."""
        self.start()
        self.proc.check_alive()
        deadline = time.monotonic() + timeout
        while self.bench.redis.xlen(OUTBOX):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def lag_buckets(self) -> dict[float, float]:
        """Cumulative counts of payouts_archive_lag_seconds by upper bound."""
        return buckets(self.port, "payouts_archive_lag_seconds")


@contextmanager
def _oldest_age_sampler(client: redis.Redis, every_s: float = 0.1):
    """The outbox's oldest entry age, sampled in a thread while the block runs."""
    ages: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            ages.append(outbox_backlog(client).oldest_s)
            done.wait(every_s)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield ages
    finally:
        done.set()
        thread.join()


def redis_bytes_per_item(client: redis.Redis, batch_id: str, items: int) -> dict[str, float]:
    """MEMORY USAGE (exact: SAMPLES 0) of a batch's keys, its items' claims and the outbox, which
    holds only this batch's events when the archiver is stopped. The simulator's own ledger keys
    (the "bank side") are left out: a real PSP keeps them."""
    def usage(keys) -> int:
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.memory_usage(key, samples=0)
            return sum(n or 0 for n in pipe.execute())

    ref = BatchRef(CLIENT, batch_id)
    claims = [claim_key(CLIENT, f"{batch_id}-{i}") for i in range(items)]
    parts = {"batch_keys": usage(batch_keys(ref)), "claims": usage(claims), "outbox": usage([OUTBOX])}
    per_item = {name: round(n / items, 1) for name, n in parts.items()}
    per_item["total"] = round(sum(parts.values()) / items, 1)
    return per_item


def postgres_bytes_per_item(url: str) -> dict[str, float]:
    with psycopg.connect(url) as conn:
        sizes = dict(conn.execute(
            """SELECT relname, pg_total_relation_size(oid) FROM pg_class
               WHERE relname IN ('batches', 'items', 'events') AND relkind = 'r'""").fetchall())
        items, events = conn.execute("SELECT (SELECT count(*) FROM items), "
                                     "(SELECT count(*) FROM events)").fetchone()
    total = sum(sizes.values())
    return {"items": items, "events": events, "bytes": total,
            "bytes_per_item": round(total / items, 1) if items else None,
            "events_per_item": round(events / items, 2) if items else None}


def projection(redis_active: float, redis_kept: float, pg_per_item: float) -> dict[str, float]:
    """A year of 1 million payouts a month: PostgreSQL keeps all 12 million; Redis keeps the
    retention window's batches (7 days) at their active size less the outbox (archived)."""
    year = 12 * PAYOUTS_PER_MONTH
    window = PAYOUTS_PER_MONTH * RETENTION_DAYS / 30.4
    return {"postgres_gb_after_a_year": round(year * pg_per_item / 1e9, 1),
            "redis_gb_retention_window": round(window * redis_kept / 1e9, 2),
            "redis_gb_if_all_kept_active": round(year * redis_active / 1e9, 1)}


def ledger(bench) -> list[Row]:
    """ledger-off-* / ledger-on-*: the same batch size and profile, archiver stopped then running."""
    archive = Archive(bench)
    rows: list[Row] = []
    footprint: dict[str, float] = {}
    try:
        for profile in ("zero", "seed"):
            archive.drain()
            archive.stop()
            off = (bench.zero_latency(f"ledger-off-{profile}", items=bench.sizes.zero_items)
                   if profile == "zero" else bench.seed_profile(f"ledger-off-{profile}"))
            off.notes.insert(0, "archiver stopped (the outbox still written)")
            if profile == "zero" and off.completed:
                footprint = redis_bytes_per_item(bench.redis, off.extra["batches"][0]["batch_id"],
                                                 off.items)
                off.extra["redis_bytes_per_item"] = footprint
            archive.drain()
            before = archive.lag_buckets()
            with _oldest_age_sampler(bench.redis) as ages:
                on = (bench.zero_latency(f"ledger-on-{profile}", items=bench.sizes.zero_items)
                      if profile == "zero" else bench.seed_profile(f"ledger-on-{profile}"))
                drained = archive.drain()  # the lag of the row's last events counts too
            if not drained:
                on.problems.append("the archiver did not drain the outbox within 600 s")
                on.completed = False
            p99 = quantile_bound(before, archive.lag_buckets(), 0.99)
            ratio = on.items_per_s / off.items_per_s if on.items_per_s and off.items_per_s else None
            on.extra.update(ledger_ratio=ratio and round(ratio, 3), archive_lag_p99_le_s=p99,
                            oldest_age_max_s=max(ages, default=0.0))
            on.notes.insert(0, "archiver running: "
                            + ("no ratio" if ratio is None else f"{ratio:.2f}x the rate with it stopped")
                            + f"; archive lag p99 <= {p99} s (histogram bucket), oldest unarchived "
                            f"event at most {max(ages, default=0.0):.1f} s old (sampled /100 ms)")
            rows += [off, on]
    finally:
        archive.drain()
        archive.stop()
    pg = postgres_bytes_per_item(bench.stack.env["DATABASE_URL"])
    if footprint and pg["bytes_per_item"]:
        kept = footprint["total"] - footprint["outbox"]
        rows[0].extra["projection"] = projection(footprint["total"], kept, pg["bytes_per_item"])
        rows[0].extra["postgres"] = pg
        f = footprint
        rows[0].notes.append(
            f"Redis while active {f['total']:,.0f} B/item (batch keys {f['batch_keys']:,.0f}, "
            f"claims {f['claims']:,.0f}, outbox {f['outbox']:,.0f}); PostgreSQL "
            f"{pg['bytes_per_item']:,.0f} B/item with {pg['events_per_item']} events/item "
            f"({pg['items']:,} items)")
    return rows
