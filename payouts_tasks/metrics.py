"""Worker-side Prometheus metrics, served by each worker process on its own port.

The gevent pool runs every task in the worker's main process, so one exporter per worker
sees everything. Bound to 127.0.0.1 by default (PAYOUTS_WORKER_METRICS_ADDR); 0 disables it.
"""

from __future__ import annotations

import logging

from celery.signals import worker_ready
from prometheus_client import Counter, Histogram, start_http_server

from payouts_core.settings import get_settings

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
                             buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 40, 60))


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
