"""The per-item `settle` task: pay one item through the provider, exactly once in effect.

It never raises for a business outcome (a raising header task would cancel the chord's
callback): paid, failed and duplicate are recorded and returned. It retries only while the
outcome is unknown (transient provider errors, a lookup the provider cannot answer yet) or
another item holds the external_id.
"""

from __future__ import annotations

import logging
import random
import time

import psycopg

from payouts_core.ledger.retention import paid_item
from payouts_core.model import Decision
from payouts_core.provider import PermanentProviderError, TransientProviderError
from payouts_core.resources import get_provider, get_store
from payouts_core.rules import GAVE_UP_WAITING, NO_OUTCOME, Action, Verdict, idempotency_key, lookup_verdict
from payouts_core.settings import get_settings
from payouts_core.store import BatchRef
from payouts_tasks.celery_app import app
from payouts_tasks.faults import crash_after_pay
from payouts_tasks.metrics import PROVIDER_SECONDS, SETTLE_OUTCOMES, SETTLE_RETRIES

log = logging.getLogger(__name__)

# While the API is still publishing a batch, wait here briefly rather than retry through the
# broker (a retry costs ~7 ms of worker CPU and sends the item to the back of the queue).
OPENING_POLL_S = 0.25
OPENING_WAIT_S = 5.0
# Transient errors whose backoff is at most this long are retried inside the task: the seed
# profile's last items otherwise waited behind the whole queue (95 % done at 8.2 s of 11.4 s).
IN_TASK_RETRY_MAX_S = 2.0


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with jitter: uniform(ceiling / 2, ceiling), ceiling = base * 2**attempt."""
    settings = get_settings()
    ceiling = min(settings.retry_backoff_max_s, settings.retry_backoff_base_s * 2 ** attempt)
    return random.uniform(ceiling / 2, ceiling)


@app.task(bind=True, name="payouts.settle", max_retries=None, ignore_result=True)
def settle(self, client: str, batch_id: str, index: int, waiting_since: float | None = None) -> str:
    started = time.monotonic()
    store = get_store()
    ref = BatchRef(client, batch_id)
    max_attempts = get_settings().settle_max_attempts
    decision = store.begin_settlement(ref, index, max_attempts)
    if decision.action == Action.NOT_READY:
        _wait_for_opening(store, ref)
        decision = store.begin_settlement(ref, index, max_attempts)
    context = {"client": client, "batch_id": batch_id, "index": index}

    if decision.action in (Action.WAIT, Action.NOT_READY):
        return _wait(self, ref, context, waiting_since, decision.waiting_on or "batch opening")
    if decision.action == Action.ARCHIVED_DUPLICATE:
        return _archived_duplicate(self, ref, index, decision.order["external_id"], context, started)
    if decision.action not in (Action.SETTLE, Action.LOOKUP):  # final, duplicate, reused, orphan
        return _done(decision.action, context, started)

    order = decision.order
    context.update(external_id=order["external_id"], attempt=decision.attempts)
    if decision.action == Action.LOOKUP:
        # Earlier attempts ended without an answer (worker killed, time limit, timeouts): stop
        # calling the provider and settle the item on what its ledger says for our key.
        return _settle_from_lookup(self, ref, index, decision, context, started, NO_OUTCOME,
                                   f"no provider answer after {decision.attempts} attempts")

    while True:
        key = idempotency_key(client, order["external_id"], decision.claim_generation)
        call_started = time.monotonic()
        try:
            transfer = get_provider().pay(idempotency_key=key, external_id=order["external_id"],
                                          amount_cents=order["amount_cents"], pix_key=order["pix_key"])
        except PermanentProviderError as exc:
            PROVIDER_SECONDS.labels("rejected").observe(time.monotonic() - call_started)
            outcome = store.record_failed(ref, index, exc.code, exc.reason,
                                          {"duration_ms": _ms_since(call_started)})
            context["failure_code"] = exc.code
        except TransientProviderError as exc:
            PROVIDER_SECONDS.labels("transient").observe(time.monotonic() - call_started)
            context["failure_code"] = exc.code
            error = {"duration_ms": _ms_since(call_started), "reason": exc.reason}
            if decision.attempts >= max_attempts:
                store.note_event(ref, index, "provider_error", decision.attempts, exc.code,
                                 {**error, "next": "lookup"})
                # Out of attempts: the last call's outcome is unknown, so ask before failing it.
                return _settle_from_lookup(self, ref, index, decision, context, started, exc.code,
                                           f"{exc.reason} (gave up after {decision.attempts} attempts)")
            delay = backoff_seconds(decision.attempts)
            store.note_event(ref, index, "provider_error", decision.attempts, exc.code,
                             {**error, "next": "retry", "retry_in_s": round(delay, 3)})
            if not _can_retry_in_task(started, delay):
                SETTLE_RETRIES.labels("transient").inc()
                log.info("settle retry", extra={**context, "outcome": "retry"})
                raise self.retry(countdown=delay) from exc
            # A short wait here, not behind every queued message: no retry tail (issue 12).
            SETTLE_RETRIES.labels("in_task").inc()
            time.sleep(delay)
            decision = store.begin_settlement(ref, index, max_attempts)
            if decision.action == Action.LOOKUP:  # a concurrent delivery used the attempts up
                return _settle_from_lookup(self, ref, index, decision, context, started, exc.code,
                                           f"{exc.reason} (gave up after {decision.attempts} attempts)")
            if decision.action != Action.SETTLE:  # another delivery settled it meanwhile
                return _done(decision.action, context, started)
            context["attempt"] = decision.attempts
            continue
        else:
            PROVIDER_SECONDS.labels("settled").observe(time.monotonic() - call_started)
            crash_after_pay(order["external_id"])
            outcome = store.record_paid(ref, index, transfer.e2e_id, decision.claim_generation,
                                        {"duration_ms": _ms_since(call_started)})
        return _done(outcome, context, started)


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _can_retry_in_task(started: float, delay: float) -> bool:
    """Retry a transient error inside the task when the wait is short and a whole provider call
    (up to its settlement deadline) still ends before 90 % of the hard time limit.

    With 80 % (44 s of 55 s, minus a 40 s deadline) a second retry rarely fitted: those items
    went through the broker and ended the seed profile's batches ~3 s after every other item.
    """
    settings = get_settings()
    elapsed = time.monotonic() - started
    return (delay <= IN_TASK_RETRY_MAX_S
            and elapsed + delay + settings.provider_settlement_timeout_s < settings.settle_time_limit_s * 0.9)


def _done(outcome: str, context: dict, started: float, level: int = logging.INFO) -> str:
    SETTLE_OUTCOMES.labels(outcome).inc()
    duration_ms = round((time.monotonic() - started) * 1000, 1)
    log.log(level, "settle outcome", extra={**context, "outcome": outcome, "duration_ms": duration_ms})
    return outcome


def _wait_for_opening(store, ref: BatchRef) -> None:
    # Never near the hard time limit: a killed settle fails the chord (measured: 100 settles of a
    # 5,000-item batch killed at a 5 s limit while the API was still publishing).
    wait_s = min(OPENING_WAIT_S, get_settings().settle_time_limit_s / 2)
    deadline = time.monotonic() + wait_s
    while store.batch_state(ref) == "accepting" and time.monotonic() < deadline:
        time.sleep(OPENING_POLL_S)


def _settle_from_lookup(task, ref: BatchRef, index: int, decision: Decision, context: dict,
                        started: float, code: str, reason: str) -> str:
    """Settle the item on the provider's answer for our key (core rule: unknown is not failed).

    An unknown answer keeps the claim held and the item unsettled: ask again later.
    """
    provider = get_provider()
    key = idempotency_key(ref.client, decision.order["external_id"], decision.claim_generation)
    transfer = provider.lookup(key)
    since_call_s = time.time() - decision.called_ms / 1000
    verdict = lookup_verdict(transfer, since_call_s, provider.final_deadline_s)
    store = get_store()
    found = {"via": "lookup", "transfer": transfer.status if transfer else None}
    if verdict == Verdict.PAID:
        outcome = store.record_paid(ref, index, transfer.e2e_id, decision.claim_generation, found)
    elif verdict == Verdict.FAILED and transfer is not None:  # rejected: the provider's reason
        outcome = store.record_failed(ref, index, transfer.failure_code or code,
                                      transfer.failure_reason or reason, found)
    elif verdict == Verdict.FAILED:
        outcome = store.record_failed(ref, index, code, f"{reason}; no transfer exists "
                                      f"{provider.final_deadline_s:g} s after the last call", found)
    else:
        store.note_event(ref, index, "lookup", decision.attempts, code,
                         {**found, "verdict": "unknown", "since_call_s": round(since_call_s, 1)})
        SETTLE_RETRIES.labels("unknown").inc()
        log.warning("settle outcome unknown; asking the provider again",
                    extra={**context, "outcome": "unknown"})
        ceiling = get_settings().retry_backoff_max_s
        countdown = max(0.1, min(ceiling, provider.final_deadline_s - since_call_s))
        raise task.retry(countdown=countdown * random.uniform(1.0, 1.2))
    return _done(outcome, context, started, level=logging.WARNING)


def _archived_duplicate(task, ref: BatchRef, index: int, external_id: str, context: dict,
                        started: float) -> str:
    """Paid with the same terms in a batch that left Redis: the ledger says where (duplicate_of).
    The ledger unreachable delays this item only; nothing is paid meanwhile."""
    try:
        paid = paid_item(get_settings().ledger.database_url, ref.client, external_id)
    except psycopg.Error as exc:
        log.warning("settle: the ledger is unreachable; asking again", extra={**context, "error": str(exc)})
        paid = None
    if paid is None:
        SETTLE_RETRIES.labels("ledger").inc()
        raise task.retry(countdown=random.uniform(2.0, 5.0))
    outcome = get_store().record_archived_duplicate(ref, index, paid)
    if outcome == "changed":  # the archived claim changed meanwhile: decide again
        raise task.retry(countdown=0.05)
    return _done(outcome, context, started)


def _wait(task, ref: BatchRef, context: dict, waiting_since: float | None, reason: str) -> str:
    """Come back later, up to PAYOUTS_INFLIGHT_WAIT_MAX_S; then fail the item without paying."""
    now = time.time()
    waiting_since = waiting_since or now
    settings = get_settings()
    if now - waiting_since > settings.inflight_wait_max_s:
        outcome = get_store().record_failed(
            ref, context["index"], GAVE_UP_WAITING,
            f"waited {int(now - waiting_since)} s for {reason}; nothing was paid")
        return _done(outcome, {**context, "waited_for": reason}, time.monotonic(), level=logging.WARNING)
    SETTLE_RETRIES.labels("waiting").inc()
    countdown = min(5.0, 0.2 * 2 ** min(task.request.retries, 5)) * random.uniform(0.8, 1.2)
    raise task.retry(kwargs={"waiting_since": waiting_since}, countdown=countdown)
