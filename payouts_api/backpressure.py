"""A bounded archive backlog (SPEC §10): past PAYOUTS_OUTBOX_MAX unarchived events, a NEW batch is
refused with 503 and Retry-After before anything is written; replays of accepted batches still
answer, and their settlement goes on (it never waits on the ledger). One XLEN per POST."""

from __future__ import annotations

from flask import current_app

from payouts_api.problems import Problem
from payouts_core.ledger.backlog import outbox_backlog
from payouts_core.store import BatchRef, PayoutStore

# The archiver writes thousands of events a second once PostgreSQL is back: half a minute is
# when a refused client should look again.
RETRY_AFTER_S = 30


def refuse_new_batch_when_backlog_full(store: PayoutStore, ref: BatchRef) -> None:
    outbox_max = current_app.config["SETTINGS"].ledger.outbox_max
    backlog = outbox_backlog(store.client)
    if backlog.full(outbox_max) and not store.batch_exists(ref):
        raise Problem(503, "Service unavailable",
                      f"the ledger archive is behind ({backlog.events} events waiting, the limit is "
                      f"{outbox_max}); new batches are refused until it catches up, nothing was "
                      "accepted. Batches already accepted keep settling.",
                      headers={"Retry-After": str(RETRY_AFTER_S)})
