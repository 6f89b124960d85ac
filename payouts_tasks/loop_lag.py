"""How late a gevent worker's greenlets get the CPU: a probe asks to sleep 0.5 s and records how
much later it woke.

A worker process runs all its tasks on one core. Once more greenlets are ready than that core
serves, each waits its turn, a neighbour's publish and aggregate included: at 1,000 greenlets a
process on a busy machine woke them seconds late (docs/BENCHMARKS.md, "Worker concurrency"). Seen
here as a histogram, on the dashboard and in the PayoutsWorkerLoopLag alert.
"""

from __future__ import annotations

import sys
import time

from celery.signals import worker_ready
from prometheus_client import Histogram

PERIOD_S = 0.5
LOOP_LAG = Histogram("payouts_worker_loop_lag_seconds",
                     "How much later than asked a sleeping greenlet of this worker process woke: "
                     "the wait of every ready task for the process's CPU.",
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


def measure(period_s: float = PERIOD_S) -> None:
    """Forever: sleep `period_s` on the gevent hub and record the overshoot."""
    import gevent  # noqa: PLC0415 (gevent only where a gevent pool runs)

    while True:
        asked = time.monotonic()
        gevent.sleep(period_s)
        LOOP_LAG.observe(max(0.0, time.monotonic() - asked - period_s))


@worker_ready.connect
def start_probe(**_kwargs) -> None:
    """In a gevent worker (its hub patched in), one probe greenlet; other pools have no hub."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("time"):
        import gevent  # noqa: PLC0415

        gevent.spawn(measure)
