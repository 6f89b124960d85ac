"""Redis bytes an external_id costs after its batch was retired (issue 18: target <= 40 B).

`python -m bench.archived_claims [IDS_PER_CLIENT ...]`: for each size, a private Redis (the
devstack's configuration), one client's batches of 1,000 items settled through the store's own
scripts (begin_settlement, record_paid or record_failed, complete), then retired as the sweeper
retires them; prints used_memory per archived id, measured against the empty Redis. The ledger
check is skipped here (its own tests cover it): this measures what stays in Redis.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import redis

from payouts_core.store import ARCHIVED_CLAIMS, OUTBOX, BatchRef, Order, PayoutStore, fingerprint
from payouts_devstack import free_port, start_redis

BATCH = 1000


def used_memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def measure(ids: int) -> dict:
    port = free_port()
    proc = start_redis(port, Path(tempfile.mkdtemp(prefix="bench-archived-")), appendonly=False)
    try:
        r = redis.Redis(port=port)
        store = PayoutStore(r)
        baseline = used_memory(r)
        active_peak = 0
        for first in range(0, ids, BATCH):
            ref = BatchRef("acme", f"b{first}")
            orders = [Order(i, f"creator-{first + i:09d}", f"user-{first + i}", 1000 + i,
                            f"creator{first + i}@example.com", "c***@example.com", "email")
                      for i in range(min(BATCH, ids - first))]
            store.create_batch(ref, fingerprint({"b": first}), orders, lease_token="t")
            store.open_batch(ref, "t")
            for order in orders:
                decision = store.begin_settlement(ref, order.index, 6)
                if order.index % 10 == 0:
                    store.record_failed(ref, order.index, "AC03", "invalid account")
                else:
                    store.record_paid(ref, order.index, f"E{first + order.index:031d}",
                                      decision.claim_generation)
            store.complete_batch(ref)
            active_peak = max(active_peak, used_memory(r))
            r.delete(OUTBOX)  # the archiver's job; the ledger check is out of scope here
            store.retire(ref, int(r.hget(f"payouts:batch:{ref.member}", "events")))
        r.delete("payouts:stats")
        buckets = list(r.scan_iter(f"{ARCHIVED_CLAIMS}*", count=10_000))
        encodings = {r.object("encoding", k).decode() for k in buckets[:200]}
        after = used_memory(r) - baseline
        return {"ids": ids, "buckets": len(buckets), "encoding": ",".join(sorted(encodings)),
                "bytes_per_id": after / ids}
    finally:
        proc.stop(grace=5)


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [10_000, 100_000]
    print(f"{'archived ids':>12} | {'buckets':>7} | {'encoding':>8} | {'Redis bytes per id':>18}")
    for size in sizes:
        row = measure(size)
        print(f"{row['ids']:>12,} | {row['buckets']:>7,} | {row['encoding']:>8} | "
              f"{row['bytes_per_id']:>18.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
