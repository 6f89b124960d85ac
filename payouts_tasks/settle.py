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
from payouts_core.timing_rules import OPENING_POLL_S
from payouts_tasks import timing
from payouts_tasks.celery_app import app
from payouts_tasks.faults import crash_after_pay
from payouts_tasks.metrics import PROVIDER_SECONDS, SETTLE_OUTCOMES, SETTLE_RETRIES
from payouts_tasks.routing import retry_queue

log = logging.getLogger(__name__)


@app.task(bind=True, name="payouts.settle", max_retries=None, ignore_result=True)
def settle(self, client: str, batch_id: str, index: int, waiting_since: float | None = None) -> str:
    """Follow the store's decisions (payouts_core/model.py, Settlement.begin_settlement) until
    the item is final or must come back later: one decision, one step, then decide again."""
    started = time.monotonic()
    store = get_store()
    ref = BatchRef(client, batch_id)
    settings = get_settings()
    timing = settings.timing
    context = {"client": client, "batch_id": batch_id, "index": index}
    waited_for_opening = False
    gave_up_on: tuple[str, str] | None = None  # the last transient error, once attempts ran out
    while True:
        decision = store.begin_settlement(ref, index, settings.settle_max_attempts)
        match decision.action:
            case Action.NOT_READY if not waited_for_opening:
                _wait_for_opening(store, ref, timing.opening_wait_s())
                waited_for_opening = True
            case Action.WAIT | Action.NOT_READY:
                return _wait(self, ref, context, waiting_since, decision.waiting_on or "batch opening")
            case Action.ARCHIVED_DUPLICATE:
                return _archived_duplicate(self, ref, index, decision.order["external_id"], context,
                                           started)
            case Action.LOOKUP:
                # Earlier attempts ended without an answer (worker killed, time limit, timeouts):
                # stop calling the provider and settle the item on what it holds for our key.
                context.update(external_id=decision.order["external_id"], attempt=decision.attempts)
                code, reason = gave_up_on or (NO_OUTCOME, None)
                why = (f"{reason} (gave up after {decision.attempts} attempts)" if reason
                       else f"no provider answer after {decision.attempts} attempts")
                return _settle_from_lookup(self, ref, index, decision, context, started, code, why)
            case Action.SETTLE:
                context.update(external_id=decision.order["external_id"], attempt=decision.attempts)
                outcome, gave_up_on = _call_provider(self, ref, index, decision, context, started)
                if outcome is not None:
                    return _done(outcome, context, started)
            case _:  # final, duplicate, reused, orphan: recorded by the store already
                return _done(decision.action, context, started)


def _call_provider(task, ref: BatchRef, index: int, decision: Decision, context: dict,
                   started: float) -> tuple[str | None, tuple[str, str] | None]:
    """One provider call and its record: (outcome, None) when recorded; (None, None) after a
    transient error waited out here; (None, (code, reason)) when the attempts are used up (the
    caller decides again: a lookup). Raises Retry for a wait through the broker."""
    store, order = get_store(), decision.order
    key = idempotency_key(ref.client, order["external_id"], decision.claim_generation)
    call_started = time.monotonic()
    try:
        transfer = get_provider().pay(idempotency_key=key, external_id=order["external_id"],
                                      amount_cents=order["amount_cents"], pix_key=order["pix_key"])
    except PermanentProviderError as exc:
        PROVIDER_SECONDS.labels("rejected").observe(time.monotonic() - call_started)
        context["failure_code"] = exc.code
        return store.record_failed(ref, index, exc.code, exc.reason,
                                   {"duration_ms": _ms_since(call_started)}), None
    except TransientProviderError as exc:
        PROVIDER_SECONDS.labels("transient").observe(time.monotonic() - call_started)
        context["failure_code"] = exc.code
        error = {"duration_ms": _ms_since(call_started), "reason": exc.reason}
        if decision.attempts >= get_settings().settle_max_attempts:
            # Out of attempts: the last call's outcome is unknown, so ask before failing it.
            store.note_event(ref, index, "provider_error", decision.attempts, exc.code,
                             {**error, "next": "lookup"})
            return None, (exc.code, exc.reason)
        timing = get_settings().timing
        delay = timing.backoff_s(decision.attempts)
        store.note_event(ref, index, "provider_error", decision.attempts, exc.code,
                         {**error, "next": "retry", "retry_in_s": round(delay, 3)})
        if not timing.retry_in_task(time.monotonic() - started, delay):
            SETTLE_RETRIES.labels("transient").inc()
            log.info("settle retry", extra={**context, "outcome": "retry"})
            raise _retry(task, ref, countdown=delay) from exc
        # A short wait here, not behind every queued message: no retry tail.
        SETTLE_RETRIES.labels("in_task").inc()
        time.sleep(delay)
        return None, None
    PROVIDER_SECONDS.labels("settled").observe(time.monotonic() - call_started)
    crash_after_pay(order["external_id"])
    return store.record_paid(ref, index, transfer.e2e_id, decision.claim_generation,
                             {"duration_ms": _ms_since(call_started)}), None


def _retry(task, ref: BatchRef, **options):
    """Come back later through the client's retry queue, not behind its queued items
    (payouts_tasks/routing.py)."""
    return task.retry(queue=retry_queue(ref.client), **options)


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _done(outcome: str, context: dict, started: float, level: int = logging.INFO) -> str:
    SETTLE_OUTCOMES.labels(outcome).inc()
    timing.settled(BatchRef(context["client"], context["batch_id"]), outcome,
                   context.get("failure_code"), time.monotonic() - started)
    duration_ms = round((time.monotonic() - started) * 1000, 1)
    log.log(level, "settle outcome", extra={**context, "outcome": outcome, "duration_ms": duration_ms})
    return outcome


def _wait_for_opening(store, ref: BatchRef, wait_s: float) -> None:
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
        context["failure_code"] = transfer.failure_code or code
        outcome = store.record_failed(ref, index, transfer.failure_code or code,
                                      transfer.failure_reason or reason, found)
    elif verdict == Verdict.FAILED:
        outcome = store.record_failed(ref, index, code, f"{reason}; no transfer exists "
                                      f"{provider.final_deadline_s:g} s after the last call", found)
    else:
        store.note_event(ref, index, "lookup", decision.attempts, code,
                         {**found, "verdict": "unknown", "since_call_s": round(since_call_s, 1)})
        SETTLE_RETRIES.labels("unknown").inc()
        timing.UNKNOWN.labels(str(since_call_s > provider.final_deadline_s).lower()).inc()
        log.warning("settle outcome unknown; asking the provider again",
                    extra={**context, "outcome": "unknown"})
        raise _retry(task, ref, countdown=get_settings().timing.unknown_countdown_s(
            provider.final_deadline_s, since_call_s))
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
        raise _retry(task, ref, countdown=random.uniform(2.0, 5.0))
    outcome = get_store().record_archived_duplicate(ref, index, paid)
    if outcome == "changed":  # the archived claim changed meanwhile: decide again
        raise _retry(task, ref, countdown=0.05)
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
        return _done(outcome, {**context, "waited_for": reason, "failure_code": GAVE_UP_WAITING},
                     time.monotonic(), level=logging.WARNING)
    SETTLE_RETRIES.labels("waiting").inc()
    countdown = settings.timing.waiting_countdown_s(task.request.retries)
    raise _retry(task, ref, kwargs={"waiting_since": waiting_since}, countdown=countdown)
