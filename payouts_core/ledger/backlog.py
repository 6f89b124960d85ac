"""How far the archive is behind: the outbox's length and the age of its oldest event.

The stream holds only events not yet archived (the archiver deletes them after its commit), so
its length is the backlog. Ages come from the entries' ids, which Redis stamps with its own clock,
compared with Redis's TIME, so no host clock enters the figure.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from payouts_core.store import OUTBOX


@dataclass(frozen=True)
class Backlog:
    events: int
    oldest_s: float  # 0.0 when the outbox is empty

    def full(self, outbox_max: int) -> bool:
        """Past PAYOUTS_OUTBOX_MAX: new batches are refused until the archive catches up."""
        return self.events > outbox_max


def outbox_backlog(r: redis.Redis) -> Backlog:
    """One round trip: XLEN, the first entry's id and Redis's clock."""
    with r.pipeline(transaction=False) as pipe:
        pipe.xlen(OUTBOX)
        pipe.xrange(OUTBOX, count=1)
        pipe.time()
        length, first, (seconds, micros) = pipe.execute()
    if not first:
        return Backlog(length, 0.0)
    entry_id = first[0][0]
    entry_ms = int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-")[0])
    now_ms = seconds * 1000 + micros / 1000
    return Backlog(length, round(max(0.0, now_ms - entry_ms) / 1000, 3))
