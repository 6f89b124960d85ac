"""The operations gauges and the timing histograms against the session's real Redis."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry

from payouts_core.ops_gauges import OperationsCollector
from payouts_core.store import BatchRef, Order
from payouts_tasks import timing


def _orders(n: int) -> list[Order]:
    return [Order(i, f"e{i}", "u", 100, "someone@example.com", "s***@example.com") for i in range(n)]


def _sample(registry: CollectorRegistry, name: str, **labels) -> float | None:
    return registry.get_sample_value(name, labels)


def test_in_flight_items_per_client_and_the_oldest_open_batch(store, uid):
    """Two clients' open batches are counted apart (the same batch id in both is two batches);
    a completed batch leaves the count."""
    registry = CollectorRegistry()
    registry.register(OperationsCollector(store.client))
    before = {c: _sample(registry, "payouts_items_in_flight", client=c) or 0 for c in (f"a{uid}", f"b{uid}")}
    store.create_batch(BatchRef(f"a{uid}", "same"), "fp", _orders(3))
    store.create_batch(BatchRef(f"b{uid}", "same"), "fp", _orders(5))
    time.sleep(0.05)
    assert _sample(registry, "payouts_items_in_flight", client=f"a{uid}") == before[f"a{uid}"] + 3
    assert _sample(registry, "payouts_items_in_flight", client=f"b{uid}") == before[f"b{uid}"] + 5
    assert _sample(registry, "payouts_oldest_open_batch_age_seconds") >= 0.05
    assert _sample(registry, "payouts_redis_used_memory_bytes") > 0


def test_a_batch_is_timed_once_however_often_its_completion_is_seen(uid):
    ref = BatchRef("tests", f"timed-{uid}")
    summary = {"created_at": "2026-01-01T00:00:00.000Z", "completed_at": "2026-01-01T00:00:12.500Z"}
    count = timing.BATCH_SECONDS._sum.get()
    timing.batch_completed(ref, summary)
    timing.batch_completed(ref, summary)  # a redelivered callback, or the sweeper
    assert timing.BATCH_SECONDS._sum.get() - count == 12.5


def test_first_final_item_is_timed_once_per_batch(store, uid):
    ref = BatchRef("tests", f"first-{uid}")
    store.create_batch(ref, "fp", _orders(3))
    histogram = timing.FIRST_ITEM_SECONDS
    before = sum(b.get() for b in histogram._buckets)
    for _ in range(3):
        timing.settled(ref, "paid", None, 0.2)
    assert sum(b.get() for b in histogram._buckets) - before == 1


def test_failure_codes_outside_the_catalogue_shape_share_one_label():
    """Codes come from the provider: a PSP answering free text must not mint a series per answer."""
    ref = BatchRef("tests", "codes")
    before = timing.FAILURES.labels("other")._value.get()
    timing.settled(ref, "failed", "account closed, see <html>", 0.1)
    timing.settled(ref, "failed", "AC03", 0.1)
    assert timing.FAILURES.labels("other")._value.get() == before + 1
    assert "account closed, see <html>" not in {s.labels.get("code") for m in timing.FAILURES.collect()
                                                for s in m.samples}


def test_the_loop_lag_probe_records_how_long_a_blocked_hub_kept_it_waiting():
    """A task holding the CPU (here an unpatched sleep of 0.3 s, which blocks the whole hub)
    makes the probe wake at least that late: the histogram's sum grows by at least 0.25 s."""
    import gevent
    from prometheus_client import REGISTRY

    from payouts_tasks.loop_lag import measure

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(f"payouts_worker_loop_lag_seconds_{name}") or 0.0

    count, total = sample("count"), sample("sum")
    probe = gevent.spawn(measure, 0.05)
    try:
        gevent.sleep(0.01)  # the probe is asleep on the hub
        time.sleep(0.3)  # not gevent's: nothing else runs meanwhile
        gevent.sleep(0.1)  # the probe wakes, records, sleeps again
    finally:
        probe.kill()
    assert sample("count") > count
    assert sample("sum") - total >= 0.25
