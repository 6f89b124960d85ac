"""Worker-side Prometheus metrics, served by each worker process on its own port.

The gevent pool runs every task in the worker's main process, so one exporter per worker
sees everything. Bound to 127.0.0.1 by default (PAYOUTS_WORKER_METRICS_ADDR); 0 disables it.
"""

from __future__ import annotations

import logging

from celery.signals import worker_ready
from prometheus_client import Counter, Histogram, start_http_server

from payouts_core.settings import get_settings
from payouts_tasks.timing import SPI_BUCKETS

log = logging.getLogger(__name__)

SETTLE_OUTCOMES = Counter("payouts_settle_outcomes_total",
                          "Settle task runs by outcome (paid, failed, duplicate, final, ...).",
                          ["outcome"])
SETTLE_RETRIES = Counter("payouts_settle_retries_total",
                         "Settle retries by reason: transient provider error, waiting, or an "
                         "outcome the provider cannot confirm yet (unknown).", ["reason"])
SWEEP_ERRORS = Counter("payouts_sweep_errors_total",
                       "Batches the sweeper could not read or drive (logged; the sweep goes on).")
PROVIDER_SECONDS = Histogram("payouts_provider_call_seconds",
                             "PIX provider call latency by result (settled, rejected, transient).",
                             ["result"],
                             buckets=SPI_BUCKETS)
for _label in ("settled", "rejected", "transient"):  # exist at zero, so the first call shows in rates
    PROVIDER_SECONDS.labels(_label)
for _label in ("paid", "failed", "duplicate"):
    SETTLE_OUTCOMES.labels(_label)


@worker_ready.connect
def start_exporter(**_kwargs) -> None:
    settings = get_settings()
    if not settings.worker_metrics_port:
        return
    try:
        start_http_server(settings.worker_metrics_port, addr=settings.worker_metrics_addr)
    except OSError as exc:  # another worker on this host took the port: keep working
        log.warning("worker metrics not served on %s:%s: %s", settings.worker_metrics_addr,
                    settings.worker_metrics_port, exc)
        return
    log.info("worker metrics on http://%s:%s/metrics", settings.worker_metrics_addr,
             settings.worker_metrics_port)
