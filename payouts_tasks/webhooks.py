"""Webhook delivery: events are emitted where batches complete and sent by a task, never by the API.

At-least-once: a delivery is pending in Redis before any message names it; the task is acked
late, and the sweeper re-sends a pending delivery no message carries (lost messages, retries
longer than the broker's visibility timeout allows as a countdown). Each attempt holds a lease,
and a delivered delivery is never sent again unless a client asks (redeliver).

Retried with exponential backoff and jitter for PAYOUTS_WEBHOOK_RETRY_WINDOW_S (a day) on
timeouts, connection and DNS errors, 5xx and 429 (a Retry-After asks longer, never shorter);
never on any other answer: 2xx is delivered, 3xx and other 4xx fail it for good.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from contextlib import suppress
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http.client import HTTPException
from urllib.parse import quote

import urllib3
import urllib3.connection
from prometheus_client import Counter

from payouts_core.resources import get_store, store_client
from payouts_core.settings import Settings, get_settings, webhook_lease_s
from payouts_core.store import BatchRef
from payouts_core.webhooks import (
    Attempt,
    DestinationRefused,
    LedgerEvent,
    WebhookStore,
    allowed_ports,
    parse_url,
    resolve,
    sign,
)
from payouts_tasks.celery_app import app

log = logging.getLogger(__name__)

DELIVERIES = Counter("payouts_webhook_deliveries_total",
                     "Webhook delivery attempts by outcome: delivered, retry, failed (an answer "
                     "that is not retried, or the retry window ran out), refused (SSRF guard).",
                     ["outcome"])
USER_AGENT = "pix-payouts-webhooks/0.1"
MAX_ANSWER_BYTES = 4096  # of the receiver's body: only its first line is kept, for the log
# A receiver's Retry-After is honoured up to this (longer than any retry window allowed): beyond
# the window the delivery fails "retry window over" like any other.
RETRY_AFTER_MAX_S = 30 * 24 * 3600.0
# A throttled delivery (its client at its in-flight cap) asks again after 1-2 times this.
THROTTLED_WAIT_S = 2.0


def webhooks() -> WebhookStore:
    return WebhookStore(store_client())


def redrive_grace_ms(settings: Settings) -> int:
    """How long past its time a delivery a message carries may wait before the sweeper re-sends
    it: long enough for a busy worker, short enough that a lost message costs little."""
    return int((60 + 3 * settings.webhook_timeout_s) * 1000)


def countdown_limit_s(settings: Settings) -> float:
    """Longer waits are left to the sweeper: a Redis broker redelivers an unacked countdown
    message after the visibility timeout, which would send it twice."""
    return settings.visibility_timeout_s / 2


# -- emitting ------------------------------------------------------------------------------------

def emit_batch_completed(ref: BatchRef) -> None:
    """The batch.completed event, once per batch however often its completion is observed;
    its deliveries are published at once (again on a repeat: each attempt is idempotent)."""
    store = get_store()
    summary = store.summary(ref)
    if summary is None or summary["status"] != "completed":
        return
    summary.pop("submitted_by", None)
    amounts = store.amounts_by_status(ref)
    data = {**summary, "amount_paid_cents": amounts.get("paid", 0),
            "amount_failed_cents": amounts.get("failed", 0),
            "report_url": f"/api/payouts/{quote(ref.batch_id, safe='')}"}
    created, delivery_ids = webhooks().emit(ref.client, "batch.completed", f"batch:{ref.batch_id}",
                                           data, redrive_grace_ms(get_settings()))
    for delivery_id in delivery_ids:
        deliver.delay(ref.client, delivery_id)
    if delivery_ids:
        log.info("batch.completed emitted", extra={"client": ref.client, "batch_id": ref.batch_id,
                                                   "deliveries": len(delivery_ids), "repeat": not created})


# -- delivering ----------------------------------------------------------------------------------

def _retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), None when absent or unreadable;
    at most RETRY_AFTER_MAX_S (a 400-digit value was infinity, and int(inf) raised)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return RETRY_AFTER_MAX_S if len(value) > 9 else min(float(value), RETRY_AFTER_MAX_S)
    try:
        seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
    except (TypeError, ValueError, OverflowError):
        return None
    return min(max(0.0, seconds), RETRY_AFTER_MAX_S)


def backoff_s(settings: Settings, attempt: int, retry_after: float | None = None) -> float:
    """Delay before attempt `attempt + 1`: base * 2**(attempt - 1), capped, with equal jitter
    (half fixed, half random: spread, but never much sooner than planned); a receiver's
    Retry-After is honoured when it asks longer."""
    delay = min(settings.webhook_backoff_max_s, settings.webhook_backoff_base_s * 2 ** (attempt - 1))
    delay = delay / 2 + random.uniform(0, delay / 2)
    return max(delay, min(retry_after or 0.0, RETRY_AFTER_MAX_S))


class DeadlinePassed(OSError):
    """The attempt's hard wall-clock deadline passed (PAYOUTS_WEBHOOK_TIMEOUT_S): retried."""


class _Watchdog:
    """Cuts a connection's socket once the attempt's deadline passes, whatever it is doing.

    Socket timeouts bound each read, not the attempt: a receiver sending one byte every 9 s held
    an attempt (and its greenlet) for hours under a 10 s read timeout (issue 20). A timer that
    shuts the socket down ends any blocked connect, TLS handshake, send or read, in a gevent
    worker (the timer is a greenlet) and in a plain thread alike.
    """

    def __init__(self, connection, seconds: float):
        self.connection, self.fired = connection, False
        self.timer = threading.Timer(seconds, self._cut)
        self.timer.daemon = True

    def _cut(self) -> None:
        self.fired = True
        sock = getattr(self.connection, "sock", None)
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self):
        self.timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.timer.cancel()


def post(settings: Settings, attempt: Attempt) -> tuple[int, str, str | None]:
    """Send one signed attempt; returns (status, first line of the answer, Retry-After).

    The host is resolved and every address checked before any connection, and the connection
    goes to the checked address (a second lookup could answer differently): TLS still checks
    the certificate against the URL's host name. Redirects are not followed. The whole attempt
    (connect, TLS, request, answer) ends within PAYOUTS_WEBHOOK_TIMEOUT_S or raises DeadlinePassed.
    """
    deadline = settings.webhook_timeout_s
    destination = parse_url(attempt.url, settings.webhooks_allow_http,
                            allowed_ports(settings.webhook_ports, settings.webhooks_allow_http))
    address = resolve(destination, settings.webhooks_allow_private)[0]
    timestamp = int(time.time())
    headers = {
        "Host": destination.host_header,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": attempt.delivery_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(attempt.secrets, attempt.delivery_id, timestamp, attempt.body),
    }
    if destination.scheme == "https":
        connection = urllib3.connection.HTTPSConnection(
            address, destination.port, timeout=deadline, server_hostname=destination.host,
            assert_hostname=destination.host, cert_reqs="CERT_REQUIRED")
    else:
        connection = urllib3.connection.HTTPConnection(address, destination.port, timeout=deadline)
    watchdog = _Watchdog(connection, deadline)
    try:
        with watchdog:
            connection.request("POST", destination.target, body=attempt.body.encode(), headers=headers,
                               preload_content=False)
            response = connection.getresponse()
            answer = response.read(MAX_ANSWER_BYTES, decode_content=False)
    except (OSError, HTTPException, urllib3.exceptions.HTTPError):
        if watchdog.fired:
            raise DeadlinePassed(f"no complete answer within {deadline:g} s") from None
        raise
    finally:
        connection.close()
    if watchdog.fired:  # the answer ended just as the socket was cut: not a whole answer
        raise DeadlinePassed(f"no complete answer within {deadline:g} s")
    first_line = answer.decode("utf-8", "replace").strip().splitlines()[0][:200] if answer.strip() else ""
    return response.status, first_line, response.headers.get("Retry-After")


def attempt_delivery(settings: Settings, client: str, delivery_id: str) -> tuple[str, float | None]:
    """Make the delivery's next attempt if it is due; returns (outcome, seconds until the next
    attempt or None). Outcomes other than the four metrics' say why nothing was sent; `throttled`
    (asked again after a short delay): the client already has PAYOUTS_WEBHOOK_INFLIGHT_PER_CLIENT
    attempts running, so its slow receivers cannot take every webhook greenlet."""
    store = webhooks()
    lease_s = webhook_lease_s(settings.webhook_timeout_s)
    slot = store.take_slot(client, settings.webhook_inflight_per_client, lease_s)
    if slot is None:
        return "throttled", THROTTLED_WAIT_S * (1 + random.random())
    try:
        attempt = store.begin_attempt(client, delivery_id, lease_s=lease_s)
        if attempt == "endpoint-deleted":
            store.end_attempt(client, delivery_id, "failed", None, "endpoint deleted")
            return "failed", None
        if isinstance(attempt, str):
            return attempt, None
        try:
            return _attempt(settings, store, attempt)
        except Exception as exc:  # noqa: BLE001 - whatever broke, the attempt records an outcome
            log.exception("webhook attempt broke; retrying", extra={"client": client,
                                                                     "delivery_id": delivery_id})
            return _retry(settings, store, attempt, None, f"{type(exc).__name__} in the sender", None)
    finally:
        store.release_slot(client, slot)


def _attempt(settings: Settings, store: WebhookStore, attempt: Attempt) -> tuple[str, float | None]:
    client, delivery_id, number = attempt.client, attempt.delivery_id, attempt.attempts + 1
    context = {"client": client, "delivery_id": delivery_id, "attempt": number}
    try:
        code, answer, retry_after_header = post(settings, attempt)
    except DestinationRefused as exc:
        store.end_attempt(client, delivery_id, "refused", None, f"refused: {exc}", attempts=number)
        DELIVERIES.labels("refused").inc()
        log.warning("webhook refused by the SSRF guard", extra=context)
        return "refused", None
    except (OSError, HTTPException, urllib3.exceptions.HTTPError) as exc:  # DNS, TLS, deadline, garbled
        return _retry(settings, store, attempt, None, f"{type(exc).__name__}: {exc}"[:300], None)
    if 200 <= code < 300:
        store.end_attempt(client, delivery_id, "delivered", code, "", attempts=number,
                          ledger=_ledger_event(attempt, "webhook.delivered"))
        DELIVERIES.labels("delivered").inc()
        log.info("webhook delivered", extra={**context, "status_code": code})
        return "delivered", None
    error = f"HTTP {code}" + (f": {answer}" if answer else "")
    if code != 429 and code < 500:
        store.end_attempt(client, delivery_id, "failed", code, error, attempts=number,
                          ledger=_ledger_event(attempt, "webhook.failed"))
        DELIVERIES.labels("failed").inc()
        log.warning("webhook answered %s: not retried", code, extra=context)
        return "failed", None
    return _retry(settings, store, attempt, code, error, _retry_after_s(retry_after_header))


def _ledger_event(attempt: Attempt, event_type: str) -> LedgerEvent | None:
    """What a batch event's final delivery outcome adds to the batch's trail in the ledger (SPEC
    §10); end_attempt records it with the outcome, in one step. None for other events."""
    event = json.loads(attempt.body)
    batch_id = event.get("data", {}).get("batch_id")
    if batch_id is None:
        return None
    return LedgerEvent(batch_id, event_type, {"delivery_id": attempt.delivery_id,
                                              "event_id": event["id"], "event_type": event["type"]})


def _retry(settings: Settings, store: WebhookStore, attempt: Attempt, code: int | None, error: str,
           retry_after: float | None) -> tuple[str, float | None]:
    """Record a failed attempt as pending (or failed once the retry window is over)."""
    client, delivery_id, number = attempt.client, attempt.delivery_id, attempt.attempts + 1
    context = {"client": client, "delivery_id": delivery_id, "attempt": number}
    delay = backoff_s(settings, number, retry_after)
    next_ms = int((time.time() + delay) * 1000)
    if next_ms > attempt.window_start_ms + settings.webhook_retry_window_s * 1000:
        store.end_attempt(client, delivery_id, "failed", code, f"{error} (retry window over)",
                          attempts=number, ledger=_ledger_event(attempt, "webhook.failed"))
        DELIVERIES.labels("failed").inc()
        log.warning("webhook given up after %s attempts", number, extra=context)
        return "failed", None
    by_message = delay <= countdown_limit_s(settings)
    store.end_attempt(client, delivery_id, "pending", code, error, next_ms,
                      next_ms + redrive_grace_ms(settings) if by_message else next_ms, attempts=number)
    DELIVERIES.labels("retry").inc()
    log.info("webhook attempt failed; retrying in %.1f s", delay, extra={**context, "error": error})
    return "retry", delay if by_message else None


@app.task(name="payouts.webhook_deliver", ignore_result=True)
def deliver(client: str, delivery_id: str) -> str:
    settings = get_settings()
    outcome, countdown = attempt_delivery(settings, client, delivery_id)
    if countdown is not None:
        deliver.apply_async((client, delivery_id), countdown=countdown)
    return outcome


def redrive_due() -> int:
    """Send the pending deliveries no message carries (the sweeper calls it); returns how many."""
    settings = get_settings()
    due = webhooks().take_due(int(time.time() * 1000), redrive_grace_ms(settings))
    for client, delivery_id in due:
        deliver.delay(client, delivery_id)
    return len(due)
