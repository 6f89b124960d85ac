"""When settle waits, retries and gives up: the timing rules in one place, checked at start.

The rules depend on each other (the provider's final deadline answers before the settle time
limit, which ends before the broker redelivers the message, ...). `Timing.problems` states the
inequalities and Settings refuses to start when one does not hold; settle asks this module for
every wait, and celeryconfig takes the time limit and visibility timeout from the same values.
Why each default was chosen: docs/RELIABILITY.md ("Bounded redelivery", "Timing rules").
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# settle stretches a retry countdown by up to 20 % (jitter): the longest is the ceiling times this.
RETRY_JITTER = 1.2
# A transient error whose backoff is at most this long is retried inside the task, not behind
# every queued message.
IN_TASK_RETRY_MAX_S = 2.0
# ... and only while a whole provider call still ends before this share of the time limit.
IN_TASK_SHARE_OF_TIME_LIMIT = 0.9
# While the API is still publishing a batch, settle polls here briefly rather than retry
# through the broker (a retry sends the item to the back of the queue).
OPENING_POLL_S = 0.25
OPENING_WAIT_S = 5.0
# An item waiting for another item's claim comes back after 0.2 s, doubling up to this.
WAITING_COUNTDOWN_MAX_S = 5.0


@dataclass(frozen=True)
class Timing:
    provider_deadline_s: float  # the provider's final deadline: no answer by then, no transfer
    time_limit_s: int  # settle's hard time limit (celeryconfig task_annotations)
    visibility_s: int  # the Redis broker redelivers an unacknowledged message after this
    backoff_base_s: float
    backoff_max_s: float
    stall_after_s: int  # the sweeper re-drives a batch idle this long
    inflight_wait_max_s: int  # an item waits this long for another item's claim, then fails
    deadline_setting: str = "PIX_SIM_SETTLEMENT_TIMEOUT_S"  # the provider's deadline's setting

    def problems(self) -> list[str]:
        """The inequalities between the settings, each broken one as a message naming them."""
        found = []
        if self.time_limit_s <= self.provider_deadline_s:
            found.append(f"PAYOUTS_SETTLE_TIME_LIMIT_S must exceed {self.deadline_setting} "
                         "(the provider's deadline answers first; the time limit is the backstop)")
        if self.time_limit_s >= self.visibility_s:
            found.append("PAYOUTS_SETTLE_TIME_LIMIT_S must stay below PAYOUTS_VISIBILITY_TIMEOUT_S "
                         "(a task still running at the visibility timeout is delivered twice)")
        # A Redis broker counts a retry's visibility from when the worker took it, so its
        # countdown (at most the ceiling plus the jitter) and its run must both fit inside.
        if self.backoff_max_s * RETRY_JITTER + self.time_limit_s >= self.visibility_s:
            found.append("PAYOUTS_RETRY_BACKOFF_MAX_S x 1.2 + PAYOUTS_SETTLE_TIME_LIMIT_S must stay "
                         "below PAYOUTS_VISIBILITY_TIMEOUT_S (a retry still waiting or running at "
                         "the visibility timeout is delivered twice)")
        if self.stall_after_s <= self.time_limit_s:
            found.append("PAYOUTS_STALL_AFTER_S must exceed PAYOUTS_SETTLE_TIME_LIMIT_S "
                         "(a batch is idle only when no settle can still be running)")
        return found

    def backoff_s(self, attempt: int) -> float:
        """Exponential backoff with jitter: uniform(ceiling / 2, ceiling), ceiling = base * 2**attempt."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt)
        return random.uniform(ceiling / 2, ceiling)

    def retry_in_task(self, elapsed_s: float, delay_s: float) -> bool:
        """Wait out a transient error inside the task when the wait is short and a whole provider
        call (up to its deadline) still ends before IN_TASK_SHARE_OF_TIME_LIMIT of the limit."""
        return (delay_s <= IN_TASK_RETRY_MAX_S and elapsed_s + delay_s + self.provider_deadline_s
                < self.time_limit_s * IN_TASK_SHARE_OF_TIME_LIMIT)

    def opening_wait_s(self) -> float:
        """How long settle polls a batch still being published: never near the time limit (a
        killed settle fails the chord)."""
        return min(OPENING_WAIT_S, self.time_limit_s / 2)

    def unknown_countdown_s(self, deadline_s: float, since_call_s: float) -> float:
        """When to ask the provider again about an unknown outcome: at its deadline, at most the
        backoff ceiling from now, with up to RETRY_JITTER stretch."""
        countdown = max(0.1, min(self.backoff_max_s, deadline_s - since_call_s))
        return countdown * random.uniform(1.0, RETRY_JITTER)

    @staticmethod
    def waiting_countdown_s(retries: int) -> float:
        """When an item waiting for another item's claim looks again: 0.2 s doubling to 5 s, ±20 %."""
        return min(WAITING_COUNTDOWN_MAX_S, 0.2 * 2 ** min(retries, 5)) * random.uniform(0.8, 1.2)
