"""API metrics for Prometheus at /metrics: HTTP traffic here, settlement totals from Redis.

Service-wide volumes are the operator's, not a tenant's: /metrics answers only to the operator
token (PAYOUTS_METRICS_TOKEN, as a bearer token), never to a client's API key, and to nobody
when no token is configured.

Under gunicorn, PROMETHEUS_MULTIPROC_DIR (set by gunicorn.conf.py) makes the counters
file-backed per worker and the scrape sums them. Totals that workers produce (items by final
status, queue depth, open batches) are read from Redis at scrape time, so they are global.
"""

from __future__ import annotations

import os
from contextlib import suppress

import redis
from flask import Blueprint, Response, current_app
from kombu.exceptions import OperationalError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from payouts_api.auth import is_operator
from payouts_api.problems import Problem
from payouts_core.ledger.backlog import outbox_backlog
from payouts_core.ops_gauges import OperationsCollector
from payouts_core.rules import COUNTER
from payouts_tasks import app as celery_app
from payouts_tasks.routing import WEBHOOK_QUEUE, client_queues, known_clients

bp = Blueprint("metrics", __name__)

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT",
                          "TRACE"})


class _BoundedMethodLabel:
    """Clients choose the method, and every new label value is a new time series kept for the
    life of the process: a method outside HTTP's standard set is counted as "other". (The route
    label is already bounded: the matched rule, or "unmatched".)"""

    def labels(self, *values, **named):
        named = named or dict(zip(self._labelnames, values, strict=True))
        if named["method"] not in HTTP_METHODS:
            named["method"] = "other"
        return super().labels(**named)


class _HttpCounter(_BoundedMethodLabel, Counter):
    pass


class _HttpHistogram(_BoundedMethodLabel, Histogram):
    pass


HTTP_REQUESTS = _HttpCounter("payouts_http_requests_total",
                             "HTTP requests by route, method and status.",
                             ["route", "method", "status"])
HTTP_SECONDS = _HttpHistogram("payouts_http_request_duration_seconds",
                              "HTTP request latency by route.", ["route", "method"],
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
BATCHES_ACCEPTED = Counter("payouts_batches_accepted_total", "Batches accepted (202).")
ITEMS_ACCEPTED = Counter("payouts_items_accepted_total", "Items in accepted batches.")


class SettlementCollector(Collector):
    """Reads the service-wide totals the store keeps in Redis, and the queue depth, at scrape time."""

    def __init__(self, store):
        self.store = store

    def collect(self):
        try:
            stats = self.store.stats()
            depths = _queue_depths(self.store)
        except (redis.RedisError, OperationalError):
            return
        items = GaugeMetricFamily("payouts_items_final", "Items that reached a final status, ever.",
                                  labels=["status"])
        for status in COUNTER:  # the final statuses
            items.add_metric([status], stats["items"].get(status, 0))
        yield items
        depth = GaugeMetricFamily("payouts_queue_depth", "Messages waiting in each Celery queue "
                                  "(a settle and a retry queue per client, batches, webhooks, default).",
                                  labels=["queue"])
        for queue, count in depths.items():
            depth.add_metric([queue], count)
        yield depth
        yield GaugeMetricFamily("payouts_open_batches", "Batches not yet completed.",
                                value=stats["open_batches"])


class LedgerBacklogCollector(Collector):
    """The archive's backlog, read from Redis at scrape time (global, like the totals above): the
    outbox's length and its oldest event's age. An alert on the age finds a stopped archiver or
    an unreachable PostgreSQL; the length approaching PAYOUTS_OUTBOX_MAX means new batches are
    about to be refused."""

    def __init__(self, store, outbox_max: int):
        self.store, self.outbox_max = store, outbox_max

    def collect(self):
        try:
            backlog = outbox_backlog(self.store.client)
        except redis.RedisError:
            return
        yield GaugeMetricFamily("payouts_outbox_backlog_events",
                                "Events in the outbox not yet archived in the ledger.",
                                value=backlog.events)
        yield GaugeMetricFamily("payouts_outbox_oldest_age_seconds",
                                "Age of the oldest event not yet archived (0 when none waits).",
                                value=backlog.oldest_s)
        yield GaugeMetricFamily("payouts_outbox_max_events",
                                "PAYOUTS_OUTBOX_MAX: past it, new batches are refused (503).",
                                value=self.outbox_max)


def _queue_names(store) -> list[str]:
    """The static queues, the webhooks queue and every known client's settle and retry queues."""
    clients = known_clients(store.client, current_app.config["SETTINGS"])
    return sorted({*celery_app.amqp.queues, WEBHOOK_QUEUE,
                   *(queue for client in clients for queue in client_queues(client))})


def _queue_depths(store) -> dict[str, int]:
    """Messages waiting per queue, over a connection of the app's broker pool (a scrape opened
    one connection per call before, a cost any caller could multiply)."""
    depths = {}
    names = _queue_names(store)
    with celery_app.pool.acquire(block=True, timeout=5) as conn:
        for queue in names:
            channel = conn.channel()  # a passive declare of a missing queue closes its channel
            try:
                depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
            except conn.channel_errors:  # the broker has no such queue yet: nothing is waiting
                depths[queue] = 0
            finally:
                with suppress(*conn.channel_errors, *conn.connection_errors):
                    channel.close()
    return depths


@bp.get("/metrics")
def metrics():
    if not is_operator():
        raise Problem(401, "Unauthorized", "/metrics needs the operator token (PAYOUTS_METRICS_TOKEN) "
                      "as 'Authorization: Bearer <token>'; client API keys are not accepted.",
                      headers={"WWW-Authenticate": 'Bearer realm="payouts-metrics"'})
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        for collector in (HTTP_REQUESTS, HTTP_SECONDS, BATCHES_ACCEPTED, ITEMS_ACCEPTED):
            registry.register(collector)
    registry.register(SettlementCollector(current_app.extensions["payouts_store"]))
    registry.register(LedgerBacklogCollector(current_app.extensions["payouts_store"],
                                             current_app.config["SETTINGS"].ledger.outbox_max))
    registry.register(OperationsCollector(current_app.extensions["payouts_store"].client))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

