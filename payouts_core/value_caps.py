"""Per-client value caps: what one batch, and one client in one UTC day, may ask to pay.

A leaked key could otherwise submit 10,000 x R$ 14.999,99 per batch, 20 batches per 10 s (issue
20). Counted at acceptance over every item submitted (a failed or duplicate item included: what a
client may ask, not what moved), so the cap holds before any money moves.

Key: `payouts:value:{c}:{yyyymmdd}` holds the cents a client's batches accepted that UTC day
(kept two days). A reservation is an INCRBY, undone when over the cap or when the batch was not
created after all (a replay, an error): two batches racing over the cap may both be refused,
never both accepted.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import redis

from payouts_core.rules import encode_id

PREFIX = "payouts:value:"
KEEP_S = 2 * 24 * 3600


class ValueCapExceeded(Exception):
    """A batch above PAYOUTS_MAX_BATCH_AMOUNT_CENTS, or one that would take its client's day above
    PAYOUTS_MAX_DAILY_AMOUNT_CENTS."""

    def __init__(self, scope: str, cap: int, requested: int, used: int = 0):
        super().__init__(f"{scope} value cap {cap} cents: {requested} requested, {used} used")
        self.scope, self.cap, self.requested, self.used = scope, cap, requested, used


def batch_value(amounts: Iterable[int]) -> int:
    return sum(amounts)


def check_batch_value(value: int, cap: int) -> None:
    if value > cap:
        raise ValueCapExceeded("batch", cap, value)


class DailyValue:
    """One client's accepted value per UTC day."""

    def __init__(self, client: redis.Redis):
        self.client = client

    def key(self, client: str, now: datetime | None = None) -> str:
        day = (now or datetime.now(UTC)).strftime("%Y%m%d")
        return f"{PREFIX}{encode_id(client)}:{day}"

    def reserve(self, client: str, cents: int, cap: int) -> str:
        """Count `cents` against today's cap; returns the key to release from, or raises."""
        key = self.key(client)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.incrby(key, cents)
            pipe.expire(key, KEEP_S)
            total, _ = pipe.execute()
        if total > cap:
            self.release(key, cents)
            raise ValueCapExceeded("daily", cap, cents, total - cents)
        return key

    def release(self, key: str, cents: int) -> None:
        self.client.decrby(key, cents)
