"""The settlement rules as plain Python: the reference the Lua scripts keep atomically in Redis.

Read this module to learn the rules; change it first to change them. Each method here is one
Lua script (payouts_core/lua/) and is written in the same order with the same names, so a
difference shows line by line. tests/core/test_rules_model.py runs random interleavings of
every transition against this model and against the real scripts on a real Redis, and fails
at the first step where items, claims or counters differ.

The model keeps what the scripts keep: per batch its state, counters, items (the public report
entries) and orders (what settle needs), and per client and external_id one claim (or the
archived remainder of one). Timestamps are left out: they never decide anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from payouts_core.rules import (
    COUNTER,
    FINAL_STATUSES,
    TERMS_TAG_HEX,
    Action,
    ItemStatus,
    reuse_reason,
    same_terms,
)


class BatchState(StrEnum):
    ACCEPTING = "accepting"  # written, its chord not yet being published
    PROCESSING = "processing"  # opened by its publisher: settle may start
    COMPLETED = "completed"  # every item final, the report is final


#: The batch lifecycle: (from, to) -> who may make the move, and when. None = no batch.
LIFECYCLE: dict[tuple[BatchState | None, BatchState | None], str] = {
    (None, BatchState.ACCEPTING):
        "the API (create_batch): a new batch_id, its publishing lease held by the request",
    (BatchState.ACCEPTING, BatchState.ACCEPTING):
        "anyone (take_over_publishing: a replay of the POST, the sweeper) once the lease expired:"
        " a new lease token",
    (BatchState.ACCEPTING, BatchState.PROCESSING):
        "the publisher holding the lease, or any publisher once it expired untaken (open_batch);"
        " later only that publisher may publish again (its redelivery), until `published`",
    (BatchState.ACCEPTING, None):
        "the lease holder whose publishing failed (discard_batch): nothing was paid",
    (BatchState.PROCESSING, BatchState.COMPLETED):
        "anyone (complete_batch: the chord's aggregate, the sweeper) once processed == total",
    (BatchState.COMPLETED, None):
        "the sweeper (retire) once the ledger holds every event of the batch",
}


@dataclass
class Claim:
    """Who holds or paid one client's external_id, with which terms, under which generation.

    `gen` feeds the provider idempotency key: a new claim after a failure gets a new key.
    Fields are only ever set (as Redis HSET does), never cleared, except `called_ms`.
    """

    state: str | None = None  # inflight | paid | failed
    batch_id: str | None = None
    index: str | None = None
    gen: int | None = None
    terms: str | None = None
    e2e_id: str | None = None
    called_ms: int | None = None  # when the provider was last called under this claim

    def held_by(self, batch_id: str, index: int) -> bool:
        return self.batch_id == batch_id and self.index == str(index)

    def where(self) -> str:
        return f"batch {self.batch_id} item {self.index}"


@dataclass(frozen=True)
class ArchivedClaim:
    """What remains of a final claim once the ledger holds its batch: state, gen, terms tag."""

    state: str  # paid | failed
    gen: int
    tag: str  # the terms digest's first TERMS_TAG_HEX hex digits


@dataclass
class Batch:
    state: BatchState
    items: list[dict]  # the public report entries, as stored
    orders: list[dict]  # external_id, amount_cents, pix_key (until final), terms, wait_for
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("processed", *COUNTER.values()), 0))
    events: int = 1  # the ledger outbox sequence: batch.accepted is event 1
    publisher: str | None = None
    published: bool = False
    lease: str | None = None


@dataclass(frozen=True)
class Decision:
    """What a settlement may do now (begin_settlement's reply)."""

    action: Action
    claim_generation: int = 0
    attempts: int = 0
    waiting_on: str | None = None  # `batch_id#index` of the item holding the external_id
    called_ms: int = 0  # when the provider was last called under this claim (ms since epoch)
    order: dict | None = None  # what settle needs (the store reads it from Redis; holds the PIX key)


class Settlement:
    """All batches and claims of the service, and every transition that changes them."""

    def __init__(self):
        self.batches: dict[tuple[str, str], Batch] = {}
        self.claims: dict[tuple[str, str], Claim] = {}
        self.archived: dict[tuple[str, str], ArchivedClaim] = {}
        self.retired: set[tuple[str, str]] = set()  # batch ids retired to the ledger: still taken

    # -- the batch lifecycle (LIFECYCLE) ---------------------------------------------------

    def create_batch(self, client: str, batch_id: str, items: list[dict], lease: str) -> bool:
        """Accept a batch: its items pending, a repeated external_id waiting for its first."""
        if (client, batch_id) in self.batches or (client, batch_id) in self.retired:
            return False  # a batch_id names one payload forever
        first_seen: dict[str, int] = {}
        orders = []
        for index, item in enumerate(items):
            order = {key: item[key] for key in ("external_id", "amount_cents", "pix_key", "terms")}
            if item["external_id"] in first_seen:
                order["wait_for"] = first_seen[item["external_id"]]
            first_seen[item["external_id"]] = index
            orders.append(order)
        public = [{"external_id": i["external_id"], "user_id": i["user_id"],
                   "amount_cents": i["amount_cents"], "pix_key": i["pix_key_masked"],
                   "status": ItemStatus.PENDING.value, "attempts": 0} for i in items]
        self._move(client, batch_id, None, Batch(BatchState.ACCEPTING, public, orders, lease=lease))
        return True

    def take_over_publishing(self, client: str, batch_id: str, token: str) -> bool:
        batch = self.batches.get((client, batch_id))
        if batch is None or batch.state != BatchState.ACCEPTING or batch.lease is not None:
            return False
        self._move(client, batch_id, batch, batch)
        batch.lease = token
        return True

    def open_batch(self, client: str, batch_id: str, publisher: str) -> bool:
        """True: this publisher publishes the batch's chord (one chord per batch)."""
        batch = self.batches.get((client, batch_id))
        if batch is None or batch.published:
            return False
        if batch.state == BatchState.ACCEPTING:
            if batch.lease is not None and batch.lease != publisher:
                return False
            self._move(client, batch_id, batch, replace(batch, state=BatchState.PROCESSING,
                                                        publisher=publisher, lease=None,
                                                        events=batch.events + 1))  # batch.published
            return True
        return batch.publisher == publisher  # its own redelivery: publish again, no move

    def mark_published(self, client: str, batch_id: str) -> None:
        """Every message of the chord is in the broker: no publisher opens the batch again."""
        self.batches[client, batch_id].published = True

    def discard_batch(self, client: str, batch_id: str, lease: str) -> bool:
        batch = self.batches.get((client, batch_id))
        if batch is None or batch.lease != lease or batch.state != BatchState.ACCEPTING:
            return False
        self._move(client, batch_id, batch, None)
        return True

    def complete_batch(self, client: str, batch_id: str) -> str:
        batch = self.batches.get((client, batch_id))
        if batch is None:
            return "orphan"
        if batch.state == BatchState.COMPLETED:
            return "completed"
        if batch.counters["processed"] < len(batch.items):
            return "incomplete"
        self._move(client, batch_id, batch, replace(batch, state=BatchState.COMPLETED,
                                                    events=batch.events + 1))  # batch.completed
        return "completed"

    def retire(self, client: str, batch_id: str, events: int) -> bool:
        """The ledger holds `events` of this completed batch: it leaves Redis, and each final
        claim its items hold shrinks to an archived claim (paid stays paid forever)."""
        batch = self.batches.get((client, batch_id))
        if batch is None or batch.state != BatchState.COMPLETED or batch.events != events:
            return False
        for index, order in enumerate(batch.orders):
            key = (client, order["external_id"])
            claim = self.claims.get(key)
            if (claim is not None and claim.state in (ItemStatus.PAID, ItemStatus.FAILED)
                    and claim.held_by(batch_id, index)):
                self.archived[key] = ArchivedClaim(claim.state, claim.gen, claim.terms[:TERMS_TAG_HEX])
                del self.claims[key]
        self._move(client, batch_id, batch, None)
        self.retired.add((client, batch_id))
        return True

    # -- submission ------------------------------------------------------------------------

    def conflicting_claims(self, client: str, orders: list[dict]) -> list[tuple[int, str]]:
        """Items (index, external_id, terms) whose external_id is paid or in flight with other
        terms: the submission check (422), the same rule settle applies."""
        held: dict[str, tuple[str, str]] = {}
        for order in orders:
            claim = self.claims.get((client, order["external_id"]))
            archived = self.archived.get((client, order["external_id"]))
            if claim is not None and claim.state in ("inflight", ItemStatus.PAID):
                held[order["external_id"]] = (claim.terms, claim.where())
            elif claim is None and archived is not None and archived.state == ItemStatus.PAID:
                held[order["external_id"]] = (archived.tag, "an archived payment")
        return [(o["index"], held[o["external_id"]][1]) for o in orders
                if o["external_id"] in held and not same_terms(held[o["external_id"]][0], o["terms"])]

    # -- settling one item -----------------------------------------------------------------

    def begin_settlement(self, client: str, batch_id: str, index: int, max_attempts: int,
                         now_ms: int) -> Decision:
        """Decide what a settle task does next for one item, taking the claim when it may pay."""
        batch = self.batches.get((client, batch_id))
        if batch is None:
            return Decision(Action.ORPHAN)
        if batch.state == BatchState.ACCEPTING:
            return Decision(Action.NOT_READY)
        if index >= len(batch.items):
            return Decision(Action.ORPHAN)
        item, order = batch.items[index], batch.orders[index]
        if item["status"] in FINAL_STATUSES:
            return Decision(Action.FINAL)

        # The same external_id earlier in this batch: its outcome decides this one's.
        if "wait_for" in order:
            w = order["wait_for"]
            prior, prior_order = batch.items[w], batch.orders[w]
            if prior["status"] not in FINAL_STATUSES:
                return Decision(Action.WAIT, waiting_on=f"{batch_id}#{w}")
            if prior["status"] != ItemStatus.FAILED:
                if not same_terms(prior_order["terms"], order["terms"]):
                    self._reused(batch, index, f"item {w} of this batch")
                    return Decision(Action.REUSED)
                if prior["status"] == ItemStatus.PAID:
                    item["duplicate_of"] = {"batch_id": batch_id, "index": w,
                                            "e2e_id": prior["e2e_id"]}
                else:
                    item["duplicate_of"] = prior["duplicate_of"]
                self._finish(batch, index, ItemStatus.DUPLICATE)
                return Decision(Action.DUPLICATE)
            # failed earlier in the batch: no money moved, this item settles itself

        key = (client, order["external_id"])
        claim = self.claims.get(key)
        if claim is None:
            archived = self.archived.get(key)
            if archived is not None and archived.state == ItemStatus.PAID:
                if not same_terms(archived.tag, order["terms"]):
                    self._reused(batch, index, "an archived payment")
                    return Decision(Action.REUSED)
                return Decision(Action.ARCHIVED_DUPLICATE)  # settle asks the ledger where
            claim = Claim()
            if archived is not None:  # failed: the next claim continues its generations
                del self.archived[key]
                claim.gen = archived.gen

        mine = claim.held_by(batch_id, index)
        if claim.state == ItemStatus.PAID:
            if mine:
                item["e2e_id"] = claim.e2e_id
                self._finish(batch, index, ItemStatus.PAID)
                return Decision(Action.FINAL)
            if not same_terms(claim.terms, order["terms"]):
                self._reused(batch, index, claim.where())
                return Decision(Action.REUSED)
            item["duplicate_of"] = {"batch_id": claim.batch_id, "index": int(claim.index),
                                    "e2e_id": claim.e2e_id}
            self._finish(batch, index, ItemStatus.DUPLICATE)
            return Decision(Action.DUPLICATE)
        if claim.state == "inflight" and not mine:
            if not same_terms(claim.terms, order["terms"]):
                self._reused(batch, index, claim.where())
                return Decision(Action.REUSED)
            return Decision(Action.WAIT, waiting_on=f"{claim.batch_id}#{claim.index}")

        if claim.state != "inflight":  # free (new, or failed: no money moved): take it
            claim.state, claim.batch_id, claim.index = "inflight", batch_id, str(index)
            claim.gen, claim.terms, claim.called_ms = (claim.gen or 0) + 1, order["terms"], None
            self.claims[key] = claim
        attempts = item["attempts"]
        if attempts >= max_attempts:
            # Attempts used up: no more provider calls, only lookups of what the provider holds.
            return Decision(Action.LOOKUP, claim.gen, attempts, called_ms=claim.called_ms or 0)
        item["status"], item["attempts"] = ItemStatus.PROCESSING.value, attempts + 1
        batch.events += 1  # provider_call
        claim.called_ms = now_ms
        return Decision(Action.SETTLE, claim.gen, attempts + 1, called_ms=now_ms)

    def record_paid(self, client: str, batch_id: str, index: int, e2e_id: str,
                    claim_generation: int) -> str:
        """The provider settled under this item's key: money moved for this item."""
        batch = self.batches.get((client, batch_id))
        if batch is None or index >= len(batch.items):
            return "orphan"
        item, order = batch.items[index], batch.orders[index]
        claim = self.claims.get((client, order["external_id"]), Claim())
        if item["status"] in FINAL_STATUSES:
            # A late success under this item's own claim (a concurrent delivery was still paying
            # when another gave up): paid, unless the external_id was claimed again since (then
            # reconciliation reports the second payment).
            if not (item["status"] == ItemStatus.FAILED and claim.state == ItemStatus.FAILED
                    and claim.held_by(batch_id, index) and claim.gen == claim_generation):
                return item["status"]
            batch.counters["failed"] -= 1
            batch.counters["processed"] -= 1
        claim.state, claim.batch_id, claim.index, claim.e2e_id = "paid", batch_id, str(index), e2e_id
        self.claims[client, order["external_id"]] = claim
        item["e2e_id"] = e2e_id
        item.pop("failure_code", None)
        item.pop("failure_reason", None)
        self._finish(batch, index, ItemStatus.PAID)
        return ItemStatus.PAID.value

    def record_failed(self, client: str, batch_id: str, index: int, code: str, reason: str) -> str:
        """No money moved for this item: it ends failed and frees its claim if it held it."""
        batch = self.batches.get((client, batch_id))
        if batch is None or index >= len(batch.items):
            return "orphan"
        item, order = batch.items[index], batch.orders[index]
        if item["status"] in FINAL_STATUSES:
            return item["status"]
        claim = self.claims.get((client, order["external_id"]))
        if claim is not None and claim.state == "inflight" and claim.held_by(batch_id, index):
            claim.state = ItemStatus.FAILED.value
        item["failure_code"], item["failure_reason"] = code, reason
        self._finish(batch, index, ItemStatus.FAILED)
        return ItemStatus.FAILED.value

    def record_archived_duplicate(self, client: str, batch_id: str, index: int,
                                  duplicate_of: dict) -> str:
        """A duplicate of a payment whose claim was archived, where the ledger says it was paid."""
        batch = self.batches.get((client, batch_id))
        if batch is None or index >= len(batch.items):
            return "orphan"
        item, order = batch.items[index], batch.orders[index]
        if item["status"] in FINAL_STATUSES:
            return item["status"]
        key = (client, order["external_id"])
        archived = self.archived.get(key)
        if (key in self.claims or archived is None or archived.state != ItemStatus.PAID
                or not same_terms(archived.tag, order["terms"])):
            return "changed"
        item["duplicate_of"] = duplicate_of
        self._finish(batch, index, ItemStatus.DUPLICATE)
        return ItemStatus.DUPLICATE.value

    # -- shared steps ----------------------------------------------------------------------

    def _move(self, client: str, batch_id: str, batch: Batch | None, to: Batch | None) -> None:
        """Every batch state change goes through here: a move LIFECYCLE does not list is a bug."""
        move = (batch and batch.state, to and to.state)
        if move not in LIFECYCLE:
            raise AssertionError(f"batch {batch_id}: {move} is not in LIFECYCLE")
        if to is None:
            del self.batches[client, batch_id]
        else:
            self.batches[client, batch_id] = to

    def _finish(self, batch: Batch, index: int, status: ItemStatus) -> None:
        """Move an item to a final status and count it; its order forgets the full PIX key."""
        batch.items[index]["status"] = status.value
        batch.events += 1
        batch.counters["processed"] += 1
        batch.counters[COUNTER[status]] += 1
        batch.orders[index].pop("pix_key", None)

    def _reused(self, batch: Batch, index: int, where: str) -> None:
        """The external_id is held with other terms: failed, nothing paid."""
        code, reason = reuse_reason(where)
        batch.items[index]["failure_code"], batch.items[index]["failure_reason"] = code, reason
        self._finish(batch, index, ItemStatus.FAILED)
