"""What lets a batch leave Redis, and what stays of it there: checked against the ledger.

A completed batch is deleted from Redis only when the ledger holds every one of its events (the
batch's own sequence, counted in Redis), every item, and the same counters; its final claims
shrink to archived claims (`payouts_core/lua/lib.lua`) so an external_id paid years ago is still a
duplicate or a reuse. Where an archived payment is (for `duplicate_of`) is asked of the ledger.
"""

from __future__ import annotations

from payouts_core.ledger.reads import shared
from payouts_core.store import BatchRef


def _query(database_url: str, sql: str, params: tuple) -> tuple | None:
    """One row, on the process's ledger pool (`reads.shared`: one per process, opened again after
    a fork, the reads' timeouts). psycopg's errors pass through: settle and the sweeper take any
    of them for the ledger being unreachable and try again later."""
    with shared(database_url).pooled() as conn:
        return conn.execute(sql, params).fetchone()


def ledger_holds(database_url: str, ref: BatchRef, facts: dict) -> bool:
    """True when the ledger holds the whole batch as Redis has it (`retention_facts`)."""
    row = _query(database_url,
        """SELECT b.state, b.last_seq, b.total, b.processed, b.successful, b.failed, b.duplicates,
                  (SELECT count(*) FROM items i WHERE i.client = b.client AND i.batch_id = b.batch_id
                      AND i.status IN ('paid', 'failed', 'duplicate')),
                  (SELECT count(*) FROM events e WHERE e.client = b.client AND e.batch_id = b.batch_id)
           FROM batches b WHERE b.client = %s AND b.batch_id = %s""", tuple(ref))
    if row is None:
        return False
    state, last_seq, total, processed, successful, failed, duplicates, final_items, events = row
    # Every counted event, plus each item's `accepted` (archived under the batch's first event).
    return (state == facts["state"] == "completed" and last_seq == facts["events"]
            and events == facts["events"] + facts["total"] and total == facts["total"]
            and final_items == total
            and (processed, successful, failed, duplicates)
            == (facts["processed"], facts["successful"], facts["failed"], facts["duplicates"]))


def paid_item(database_url: str, client: str, external_id: str) -> dict | None:
    """Where the ledger holds this client's payment of `external_id`: duplicate_of's fields."""
    row = _query(database_url, """SELECT batch_id, idx, e2e_id FROM items
                                  WHERE client = %s AND external_id = %s AND status = 'paid'""",
                 (client, external_id))
    return None if row is None else {"batch_id": row[0], "index": row[1], "e2e_id": row[2]}
