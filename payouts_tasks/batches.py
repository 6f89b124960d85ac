"""Building and publishing the one chord per batch: settle every item, then aggregate.

The API asks for "the chord for this batch" here rather than assembling task internals itself.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Sequence

import redis
from celery import chord

from payouts_tasks.aggregate import aggregate
from payouts_tasks.settle import settle
from payouts_tasks.store import Order, PayoutStore

log = logging.getLogger(__name__)


def batch_chord(batch_id: str, indexes: Sequence[int]) -> chord:
    # ignore_result: settle outcomes live in the status key; the chord still counts each part.
    header = [settle.si(batch_id, i).set(ignore_result=True) for i in indexes]
    return chord(header, aggregate.si(batch_id))


def publish_items(batch_id: str, indexes: Sequence[int]) -> str:
    """Publish a chord settling these items of the batch; returns the aggregate task's id."""
    return batch_chord(batch_id, indexes).apply_async().id


def publish_batch(batch_id: str, total: int) -> str:
    """Publish the batch's chord: every item, then aggregate."""
    return publish_items(batch_id, range(total))


def accept_batch(store: PayoutStore, batch_id: str, payload_fingerprint: str,
                 orders: Sequence[Order], submitted_by: str = "") -> bool:
    """Accept a batch all-or-nothing: status key written and chord published, or neither.

    Returns False for a replay of an existing batch (nothing re-enqueued). Settle tasks wait
    while the batch is still `accepting`, so nothing is paid for a batch that ends up refused.
    A replay of a batch whose publisher died before opening it publishes it again.
    """
    lease = uuid.uuid4().hex
    created, state = store.create_batch(batch_id, payload_fingerprint, orders, submitted_by,
                                        lease_token=lease)
    if created:
        try:
            publish_batch(batch_id, len(orders))
        except Exception:
            log.exception("publishing batch failed; discarding it", extra={"batch_id": batch_id})
            with contextlib.suppress(redis.RedisError):
                store.discard_batch(batch_id, lease)  # refused if the sweeper took it over
            raise
        store.open_batch(batch_id)
        return True
    if state == "accepting":
        publish_if_abandoned(store, batch_id, len(orders))
    return False


def publish_if_abandoned(store: PayoutStore, batch_id: str, total: int) -> bool:
    """Publish a batch left `accepting` once its publisher's lease expired (it died).

    Settle is idempotent per item, so messages the first publisher had already sent cannot pay
    twice. On failure the batch stays `accepting`; the next replay or sweep tries again.
    """
    if not store.take_over_publishing(batch_id):
        return False
    log.warning("batch was left unopened; publishing it again", extra={"batch_id": batch_id})
    publish_batch(batch_id, total)
    store.open_batch(batch_id)
    return True
