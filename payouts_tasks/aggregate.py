"""The chord callback: close the batch once every item reached a final state."""

from __future__ import annotations

import logging

from payouts_core.report import summary_line
from payouts_core.resources import get_store
from payouts_core.store import BatchRef
from payouts_tasks import timing
from payouts_tasks.celery_app import app
from payouts_tasks.webhooks import emit_batch_completed

log = logging.getLogger(__name__)


@app.task(bind=True, name="payouts.aggregate", max_retries=30)
def aggregate(self, client: str, batch_id: str) -> dict:
    store = get_store()
    ref = BatchRef(client, batch_id)
    state = store.complete_batch(ref)
    if state[0] == "incomplete":  # every header task returned, so this is a lagging write
        raise self.retry(countdown=1)
    if state[0] == "completed":  # also when a redelivered callback sees it again: emitted once
        emit_batch_completed(ref)
    summary = store.summary(ref) or {}
    if summary:
        timing.batch_completed(ref, summary)
        log.info("batch completed: %s", summary_line(summary), extra=summary)
    return summary
