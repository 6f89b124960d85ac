"""The periodic sweep (celery beat): no accepted batch stays unfinished forever.

Three ways a batch can be left behind, and what the sweep does about each:
- still `accepting` after its publisher's lease expired (the API died before opening it):
  publish its chord again;
- every item final but not `completed` (the chord callback was lost, e.g. a header task was
  killed by its time limit, which fails the chord): complete it;
- no item finished for PAYOUTS_STALL_AFTER_S (settle messages lost or failed): publish a chord
  of settle tasks for the unfinished items. Settle is idempotent per item, so a message that
  was only slow, not lost, cannot pay twice.
It also sends the webhook deliveries that are due and that no task message carries, and lets
go of completed batches past their retention whose every event the ledger holds (checked).
"""

from __future__ import annotations

import logging
import time

import psycopg
import redis

from payouts_core.ledger.retention import ledger_holds
from payouts_core.resources import get_store
from payouts_core.settings import get_settings
from payouts_core.store import BatchRef
from payouts_tasks.batches import publish_if_abandoned, publish_items
from payouts_tasks.celery_app import app
from payouts_tasks.metrics import SWEEP_ERRORS
from payouts_tasks.webhooks import emit_batch_completed, redrive_due

log = logging.getLogger(__name__)
RETIRE_PER_SWEEP = 50
RETIRE_RECHECK_S = 600


@app.task(name="payouts.sweep", ignore_result=True)
def sweep() -> dict[str, str]:
    """One pass over the open batches; returns what it did per batch (for logs and tests).

    One unreadable batch is logged, counted and skipped: it never stops the others.
    """
    settings = get_settings()
    store = get_store()
    # One sweep at a time, whatever the number of beat schedulers or manual calls.
    if not store.try_sweep_lock(ttl_s=max(settings.sweep_interval_s, 5)):
        return {}
    done = {}
    try:
        for ref in store.open_batches():
            try:
                action = sweep_batch(ref, settings.stall_after_s, settings.sweep_interval_s)
            except redis.ConnectionError:
                raise
            except Exception:
                SWEEP_ERRORS.inc()
                log.exception("sweep: batch unreadable; skipped",
                              extra={"client": ref.client, "batch_id": ref.batch_id})
                action = "error"
            if action:
                done[ref.member] = action
        if resent := redrive_due():
            done["webhook deliveries re-sent"] = str(resent)
        if retired := retire_due(settings.ledger.database_url, settings.ledger.retention_s):
            done["retired"] = str(retired)
        return done
    finally:
        store.release_sweep_lock()


def retire_due(database_url: str, retention_s: int, limit: int = RETIRE_PER_SWEEP) -> int:
    """Delete from Redis the completed batches past their retention that the ledger holds in
    full; a batch the ledger lacks stays (and is logged) until the archive has caught up."""
    store = get_store()
    retired = 0
    due_ms = int((time.time() - retention_s) * 1000)
    for ref in store.completed_before(due_ms, limit):
        try:
            facts = store.retention_facts(ref)
            held = facts is not None and ledger_holds(database_url, ref, facts)
        except psycopg.Error as exc:
            log.warning("sweep: the ledger is unreachable; nothing retired", extra={"error": str(exc)})
            return retired
        except (ValueError, TypeError):  # an unreadable batch hash: kept, looked at later
            SWEEP_ERRORS.inc()
            log.exception("sweep: batch unreadable; not retired",
                          extra={"client": ref.client, "batch_id": ref.batch_id})
            held = False
        if not held:
            log.warning("sweep: batch past its retention is not all in the ledger yet; kept",
                        extra={"client": ref.client, "batch_id": ref.batch_id})
            store.retire_later(ref, due_ms + RETIRE_RECHECK_S * 1000)
            continue
        retired += store.retire(ref, facts["events"])
    return retired


def sweep_batch(ref: BatchRef, stall_after_s: int, grace_s: int) -> str | None:
    store = get_store()
    info = store.batch_progress(ref)
    if info is None or info["state"] == "completed":
        return None
    if info["state"] == "accepting":
        return "published" if publish_if_abandoned(store, ref, info["total"]) else None
    idle_s = time.time() - info["progress_ms"] / 1000
    context = {"client": ref.client, "batch_id": ref.batch_id}
    if info["processed"] >= info["total"]:
        if idle_s < grace_s:  # the chord's own callback is normally a moment away
            return None
        if store.complete_batch(ref)[0] == "completed":
            emit_batch_completed(ref)  # the chord callback that would have emitted it was lost
        log.warning("sweep: every item final but batch not completed; completed it", extra=context)
        return "completed"
    if idle_s < stall_after_s:
        return None
    unfinished = store.unfinished_indexes(ref)
    store.touch_progress(ref)
    publish_items(ref, unfinished)
    log.warning("sweep: batch idle; re-driving its unfinished items",
                extra={**context, "idle_s": int(idle_s), "items": len(unfinished)})
    return "resumed"
