"""The per-item `settle` task: pay one item through the provider, exactly once in effect.

It never raises for a business outcome (a raising header task would cancel the chord's
callback): paid, failed and duplicate are recorded and returned. It retries only while the
outcome is unknown (transient provider errors) or another item holds the external_id.
"""

from __future__ import annotations

import logging
import random
import time

from payouts_tasks.celery_app import app
from payouts_tasks.faults import crash_after_pay
from payouts_tasks.provider import PermanentProviderError, TransientProviderError
from payouts_tasks.resources import get_provider, get_store
from payouts_tasks.settings import get_settings
from payouts_tasks.store import idempotency_key

log = logging.getLogger(__name__)

GAVE_UP_WAITING = "INFLIGHT_TIMEOUT"
NO_OUTCOME = "AB03"


def backoff_seconds(attempt: int) -> float:
    """Exponential backoff with full jitter: uniform(0, min(max, base * 2**attempt))."""
    settings = get_settings()
    ceiling = min(settings.retry_backoff_max_s, settings.retry_backoff_base_s * 2 ** attempt)
    return random.uniform(ceiling / 2, ceiling)


@app.task(bind=True, name="payouts.settle", max_retries=None, ignore_result=True)
def settle(self, batch_id: str, index: int, waiting_since: float | None = None) -> str:
    store = get_store()
    decision = store.begin_settlement(batch_id, index)

    if decision.action in ("wait", "not_ready"):
        return _wait(self, batch_id, index, waiting_since, decision.waiting_on or "batch opening")
    if decision.action != "settle":  # final, duplicate or orphan: nothing left to do
        log.info("settle batch=%s item=%s outcome=%s", batch_id, index, decision.action)
        return decision.action

    order = decision.order
    key = idempotency_key(order["external_id"], decision.claim_generation)
    provider = get_provider()
    if decision.attempts > get_settings().settle_max_attempts:
        # Earlier attempts ended without an answer (worker killed, time limit): stop calling
        # the provider and settle the item on what its ledger says for our key.
        outcome = _settle_from_lookup(batch_id, index, key, NO_OUTCOME,
                                      f"no provider answer after {decision.attempts - 1} attempts")
        log.warning("settle batch=%s item=%s attempts exhausted: %s", batch_id, index, outcome)
        return outcome
    try:
        transfer = provider.pay(idempotency_key=key, external_id=order["external_id"],
                                amount_cents=order["amount_cents"], pix_key=order["pix_key"])
    except PermanentProviderError as exc:
        outcome = store.record_failed(batch_id, index, exc.code, exc.reason)
    except TransientProviderError as exc:
        if decision.attempts < get_settings().settle_max_attempts:
            log.info("settle batch=%s item=%s attempt=%s transient=%s: retrying",
                     batch_id, index, decision.attempts, exc.code)
            raise self.retry(countdown=backoff_seconds(decision.attempts)) from exc
        # Out of attempts: the last call's outcome is unknown, so ask before calling it failed.
        outcome = _settle_from_lookup(batch_id, index, key, exc.code,
                                      f"{exc.reason} (gave up after {decision.attempts} attempts)")
    else:
        crash_after_pay(order["external_id"])
        outcome = store.record_paid(batch_id, index, transfer.e2e_id)

    log.info("settle batch=%s item=%s external_id=%s attempt=%s outcome=%s",
             batch_id, index, order["external_id"], decision.attempts, outcome)
    return outcome


def _settle_from_lookup(batch_id: str, index: int, key: str, code: str, reason: str) -> str:
    """Paid if the provider holds a settled transfer under our key, else failed (no money moved)."""
    transfer = get_provider().lookup(key)
    if transfer is not None and transfer.status == "settled":
        return get_store().record_paid(batch_id, index, transfer.e2e_id)
    return get_store().record_failed(batch_id, index, code, reason)


def _wait(task, batch_id: str, index: int, waiting_since: float | None, reason: str) -> str:
    """Come back later, up to PAYOUTS_INFLIGHT_WAIT_MAX_S; then fail the item without paying."""
    now = time.time()
    waiting_since = waiting_since or now
    settings = get_settings()
    if now - waiting_since > settings.inflight_wait_max_s:
        outcome = get_store().record_failed(
            batch_id, index, GAVE_UP_WAITING,
            f"waited {int(now - waiting_since)} s for {reason}; nothing was paid")
        log.warning("settle batch=%s item=%s gave up waiting for %s", batch_id, index, reason)
        return outcome
    countdown = min(5.0, 0.2 * 2 ** min(task.request.retries, 5)) * random.uniform(0.8, 1.2)
    raise task.retry(kwargs={"waiting_since": waiting_since}, countdown=countdown)
