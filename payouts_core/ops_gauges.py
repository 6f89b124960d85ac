"""Gauges an operator alerts on, read from Redis when Prometheus scrapes the API.

How old the oldest unfinished batch is (a stuck batch, or a queue that does not drain), items
still in flight per client (one client's backlog next to everyone else's), and Redis memory
against its `maxmemory` (Redis runs `noeviction`: at the limit every write, so every new batch
and every settlement, fails). Read-only: the store stays the only writer of these keys.
"""

from __future__ import annotations

import time
from collections import defaultdict

import redis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from payouts_core.store import ALL_BATCHES, OPEN_BATCHES, BatchRef, batch_keys

# A scrape reads every open batch; past this many it reads the oldest ones only (the age is
# still exact: ages come from one ZMSCORE over all of them).
MAX_BATCHES_READ = 5000


class OperationsCollector(Collector):
    def __init__(self, client: redis.Redis):
        self.client = client

    def collect(self):
        try:
            members = list(self.client.smembers(OPEN_BATCHES))
            created = self.client.zmscore(ALL_BATCHES, members) if members else []
            memory = self.client.info("memory")
            in_flight = self._in_flight(sorted(zip(created, members, strict=True),
                                               key=lambda pair: pair[0] or 0)[:MAX_BATCHES_READ])
        except redis.RedisError:
            return
        ages = [time.time() - at for at in created if at is not None]
        yield GaugeMetricFamily("payouts_oldest_open_batch_age_seconds",
                                "Seconds since the oldest batch not yet completed was accepted "
                                "(0 when none is open).", value=max(ages, default=0.0))
        family = GaugeMetricFamily("payouts_items_in_flight",
                                   "Items of open batches not yet in a final state, by client.",
                                   labels=["client"])
        for client, count in sorted(in_flight.items()):
            family.add_metric([client], count)
        yield family
        yield GaugeMetricFamily("payouts_redis_used_memory_bytes", "Redis used_memory.",
                                value=memory.get("used_memory", 0))
        yield GaugeMetricFamily("payouts_redis_maxmemory_bytes",
                                "Redis maxmemory (0: no limit set).", value=memory.get("maxmemory", 0))

    def _in_flight(self, batches: list[tuple[float | None, bytes]]) -> dict[str, int]:
        refs = [BatchRef.from_member(member) for _, member in batches]
        with self.client.pipeline(transaction=False) as pipe:
            for ref in refs:
                pipe.hmget(batch_keys(ref)[0], "total", "processed")
            counts = pipe.execute()
        in_flight: dict[str, int] = defaultdict(int)
        for ref, (total, processed) in zip(refs, counts, strict=True):
            if total is not None:
                in_flight[ref.client] += int(total) - int(processed or 0)
        return in_flight
