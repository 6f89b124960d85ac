"""Histograms for "how long": settle, a batch, a batch's first item; worker saturation.

Buckets follow the SPI's measured figures (SPEC §7): a settlement takes p50 2.8 s, p99 4.6 s,
and past 40 s it is rejected (AB03). So the buckets are dense between 2 and 5 s, mark 40 s, and
keep a few sub-second ones for fast providers (the simulator's tests answer in milliseconds).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from datetime import datetime

from celery.signals import task_postrun, task_prerun, worker_ready
from prometheus_client import Counter, Gauge, Histogram

from payouts_core.provider.simulated import PERMANENT_REASONS, TRANSIENT_REASONS
from payouts_core.resources import store_client
from payouts_core.rules import EXTERNAL_ID_REUSED, GAVE_UP_WAITING, NO_OUTCOME
from payouts_core.settings import get_settings
from payouts_core.store import ALL_BATCHES, BatchRef

SPI_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 2.5, 2.8, 3.2, 3.6, 4, 4.6, 5, 6, 8, 10, 15,
               20, 30, 40, 60)
# A batch: seconds for small ones, minutes for 10,000 items or a retry tail, up to the in-flight
# wait (900 s) and beyond for items whose outcome stays unknown.
BATCH_BUCKETS = (0.5, 1, 2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1800, 3600)
# From the 202 to the first final item: the provider's latency plus the publish path.
FIRST_ITEM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 2.8, 3.5, 4.6, 6, 8, 10, 20, 40, 60, 120)

SETTLE_SECONDS = Histogram("payouts_settle_duration_seconds",
                           "One settle task run, from start to its outcome (retries inside it "
                           "included; 55 s is its hard time limit).", ["outcome"],
                           buckets=tuple(sorted({*SPI_BUCKETS, 55})))
FAILURES = Counter("payouts_settle_failures_total", "Items failed, by failure code.", ["code"])
UNKNOWN = Counter("payouts_unknown_outcomes_total",
                  "Lookups the provider could not answer yet; past_deadline=true when the "
                  "provider's final deadline had already passed (its answer is overdue).",
                  ["past_deadline"])
BATCH_SECONDS = Histogram("payouts_batch_duration_seconds",
                          "From a batch's 202 to its completion.", buckets=BATCH_BUCKETS)
FIRST_ITEM_SECONDS = Histogram("payouts_batch_first_item_seconds",
                               "From a batch's 202 to its first item final.",
                               buckets=FIRST_ITEM_BUCKETS)
BUSY = Gauge("payouts_worker_busy_tasks", "Tasks this worker process is running now.")
CONCURRENCY = Gauge("payouts_worker_concurrency", "Tasks this worker process can run at once.")
# Known label values exist from the start at zero, so rates and alerts see the first one.
for flag in ("true", "false"):
    UNKNOWN.labels(flag)
for code in (*PERMANENT_REASONS, *TRANSIENT_REASONS, EXTERNAL_ID_REUSED, GAVE_UP_WAITING, NO_OUTCOME):
    FAILURES.labels(code)

_CODE = re.compile(r"^[A-Z0-9_]{1,40}$")  # the SPI catalogue's shape; anything else is "other"
ONCE_TTL_S = 86400
_FINAL = frozenset({"paid", "failed", "duplicate", "reused"})  # settle's newly final outcomes
for outcome in _FINAL:
    SETTLE_SECONDS.labels(outcome)


class _Seen:
    """Batches this process has already observed, so the Redis check runs once per batch."""

    def __init__(self, size: int = 10000):
        self.size, self.members, self.lock = size, OrderedDict(), threading.Lock()

    def first(self, key: str) -> bool:
        with self.lock:
            if key in self.members:
                return False
            self.members[key] = True
            if len(self.members) > self.size:
                self.members.popitem(last=False)
            return True


_first_items = _Seen()


def _once(kind: str, ref: BatchRef) -> bool:
    """True for exactly one caller per batch across every worker (a key set NX, kept a day)."""
    return bool(store_client().set(f"payouts-metrics:{kind}:{ref.member}", 1, nx=True, ex=ONCE_TTL_S))


def settled(ref: BatchRef, outcome: str, failure_code: str | None, seconds: float) -> None:
    """A settle run ended with `outcome`; the batch's first final item is timed from its 202."""
    SETTLE_SECONDS.labels(outcome).observe(seconds)
    if outcome not in _FINAL:
        return
    if outcome == "reused":
        failure_code = EXTERNAL_ID_REUSED
    if outcome in ("failed", "reused"):
        FAILURES.labels(failure_code if failure_code and _CODE.match(failure_code) else "other").inc()
    if _first_items.first(ref.member) and _once("first-item", ref):
        accepted = store_client().zscore(ALL_BATCHES, ref.member)
        if accepted is not None:
            FIRST_ITEM_SECONDS.observe(max(0.0, time.time() - accepted))


def batch_completed(ref: BatchRef, summary: dict) -> None:
    """Time the batch once, however often its completion is observed."""
    if summary.get("completed_at") and _once("completed", ref):
        BATCH_SECONDS.observe(max(0.0, (_parse(summary["completed_at"])
                                        - _parse(summary["created_at"])).total_seconds()))


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


@worker_ready.connect
def _concurrency(sender=None, **_kwargs) -> None:
    """The pool's size (--concurrency, else WORKER_CONCURRENCY): saturation = busy / this."""
    pool = getattr(sender, "pool", None)
    CONCURRENCY.set(getattr(pool, "limit", None) or get_settings().worker_concurrency)


@task_prerun.connect
def _busy(**_kwargs) -> None:
    BUSY.inc()


@task_postrun.connect
def _idle(**_kwargs) -> None:
    BUSY.dec()
