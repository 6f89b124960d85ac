"""The money rules' vocabulary and the rules that are pure functions (SPEC §5).

One place for the item statuses, what begin_settlement may decide, which report counter each
final status feeds, what makes two payouts "the same payout", the provider idempotency key, and
how an answer to a lookup settles an item (unknown is not failed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from enum import StrEnum
from urllib.parse import quote, unquote

from payouts_core.provider import Transfer


class ItemStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    PAID = "paid"
    FAILED = "failed"
    DUPLICATE = "duplicate"


#: The report counter each final status feeds (SPEC §4); `processed` counts all three.
COUNTER: dict[ItemStatus, str] = {ItemStatus.PAID: "successful", ItemStatus.FAILED: "failed",
                                  ItemStatus.DUPLICATE: "duplicates"}
FINAL_STATUSES = frozenset(COUNTER)


class Action(StrEnum):
    """What begin_settlement decided for one item."""

    SETTLE = "settle"  # call the provider
    LOOKUP = "lookup"  # attempts used up: only ask the provider what it holds under the key
    WAIT = "wait"  # another item holds the external_id, or the batch is opening
    NOT_READY = "not_ready"  # the batch is still being published
    DUPLICATE = "duplicate"  # paid elsewhere with the same terms: recorded
    # paid with the same terms in a batch that left Redis: the ledger says where, then recorded
    ARCHIVED_DUPLICATE = "archived_duplicate"
    REUSED = "reused"  # held elsewhere with other terms: recorded failed EXTERNAL_ID_REUSED
    FINAL = "final"  # the item was already final
    ORPHAN = "orphan"  # the batch or item does not exist


EXTERNAL_ID_REUSED = "EXTERNAL_ID_REUSED"
GAVE_UP_WAITING = "INFLIGHT_TIMEOUT"
NO_OUTCOME = "AB03"


def counters_from_statuses(statuses) -> dict[str, int]:
    """The report's counters as its items' statuses say they should be (reconciliation)."""
    counts = {name: 0 for name in COUNTER.values()}
    for status in statuses:
        if status in COUNTER:
            counts[COUNTER[ItemStatus(status)]] += 1
    return {**counts, "processed": sum(counts.values())}


def paid_at_most_once(items: Iterable[tuple[str, str, str]]) -> bool:
    """SPEC §5: of one client's items with one external_id, at most one is ever `paid`.
    `items` are (client, external_id, status); the ledger's unique index states it in SQL."""
    paid = [(client, external_id) for client, external_id, status in items if status == ItemStatus.PAID]
    return len(paid) == len(set(paid))


def payout_terms(amount_cents: int, pix_key: str, user_id: str) -> str:
    """What makes two payouts "the same payout": a digest, so claims hold no personal data."""
    # Unit separators cannot occur in validated ids, amounts or normalised keys.
    return hashlib.sha256(f"{amount_cents}\x1f{pix_key}\x1f{user_id}".encode()).hexdigest()[:32]


#: An archived claim keeps only the terms digest's first hex digits (payouts_core/ledger).
TERMS_TAG_HEX = 16


def same_terms(held: str, terms: str) -> bool:
    """Is `terms` the payout whose terms are `held` (a full digest, or an archived claim's tag)?

    The one comparison behind `duplicate` versus EXTERNAL_ID_REUSED, at submission and in settle.
    """
    return terms.startswith(held)


def reuse_reason(where: str) -> tuple[str, str]:
    """The failure code and reason of an item whose external_id is held with other terms."""
    return (EXTERNAL_ID_REUSED, f"external_id is already held by {where} with other terms "
            "(amount, PIX key or user_id); nothing was paid")


def encode_id(part: str) -> str:
    """An id part of a key: percent-encoded, so it never holds the `:` that separates parts."""
    return quote(part, safe="")


def idempotency_key(client: str, external_id: str, claim_generation: int) -> str:
    """The provider key for one claim of one client's external_id.

    A redelivered task reuses its claim's generation, so the provider returns the original
    transfer; a later batch re-trying a failed external_id gets a new generation (new key).
    """
    return f"payout:{encode_id(client)}:{encode_id(external_id)}:{claim_generation}"


def parse_idempotency_key(key: str) -> tuple[str, str, int] | None:
    """(client, external_id, generation) of a key made by `idempotency_key`, else None."""
    parts = key.split(":")
    if len(parts) != 4 or parts[0] != "payout" or not parts[3].isdigit():
        return None
    return unquote(parts[1]), unquote(parts[2]), int(parts[3])


class Verdict(StrEnum):
    PAID = "paid"
    FAILED = "failed"
    UNKNOWN = "unknown"


def lookup_verdict(transfer: Transfer | None, since_last_call_s: float, final_deadline_s: float) -> Verdict:
    """Unknown is not failed (SPEC §5): only a definite "no money moved" fails the item.

    Settled: paid. Rejected: failed. No transfer once the provider's final deadline has passed
    since our last call: failed (none can appear any more). Anything else (no transfer yet, or
    pending): unknown; the claim stays held and the provider is asked again.
    """
    if transfer is not None and transfer.status == "settled":
        return Verdict.PAID
    if transfer is not None and transfer.status == "rejected":
        return Verdict.FAILED
    if transfer is None and since_last_call_s >= final_deadline_s:
        return Verdict.FAILED
    return Verdict.UNKNOWN
