"""Helpers for the ledger's read side: wait until the ledger holds all of a batch, then retire
it from Redis as retention does once its window has passed (`PayoutStore.retire`)."""

from __future__ import annotations

import os

from payouts_core.ledger.retention import ledger_holds
from payouts_core.store import BatchRef, PayoutStore
from tests.conftest import wait_for


def wait_archived(store: PayoutStore, ref: BatchRef, timeout: float = 60.0) -> None:
    """Until the ledger holds the completed batch with every event, item and counter."""
    def archived() -> bool:
        facts = store.retention_facts(ref)
        return facts is not None and ledger_holds(os.environ["DATABASE_URL"], ref, facts)

    wait_for(archived, timeout, f"batch {ref.batch_id} archived")


def forget_in_redis(store: PayoutStore, ref: BatchRef) -> None:
    """What retention does to an archived batch after its window: its Redis keys and its
    entries in the batch indexes are deleted (its claims shrink to archived claims)."""
    assert store.retire(ref, store.retention_facts(ref)["events"])
    assert store.report_json(ref) is None
