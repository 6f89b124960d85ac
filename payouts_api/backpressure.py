"""A bounded archive backlog (SPEC §10): past PAYOUTS_OUTBOX_MAX unarchived events, a NEW batch is
refused with 503 before anything is written; replays of accepted batches still answer, and their
settlement goes on (it never waits on the ledger). One XLEN per POST. No Retry-After: only a 429
carries one (SPEC §9); the detail says what to wait for."""

from __future__ import annotations

from flask import current_app

from payouts_api.problems import Problem
from payouts_core.ledger.backlog import outbox_backlog
from payouts_core.store import BatchRef, PayoutStore


def refuse_new_batch_when_backlog_full(store: PayoutStore, ref: BatchRef) -> None:
    outbox_max = current_app.config["SETTINGS"].ledger.outbox_max
    backlog = outbox_backlog(store.client)
    if backlog.full(outbox_max) and not store.batch_id_taken(ref):
        raise Problem(503, "Service unavailable",
                      f"the ledger archive is behind ({backlog.events} events waiting, the limit is "
                      f"{outbox_max}); new batches are refused until it catches up (the archiver "
                      "writes thousands of events a second once the ledger is back: try again in "
                      "a minute), nothing was accepted. Batches already accepted keep settling.")
