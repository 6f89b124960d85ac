"""The money rules and their Redis keys: batches, item statuses and external_id claims.

This module is the only writer of the `payouts:` keys. Every state change that money depends
on is one Lua script, so a crash or a redelivered task can never leave a claim, an item and
the batch counters disagreeing.

Tenancy: every batch and claim key carries the client (the API key's owner), so two clients'
equal batch ids or external ids are unrelated. Each id part is percent-encoded (`quote(...,
safe="")`), so no id, whatever characters it holds (`:` included), can make two objects share
a key: `payouts:batch:{client}:{batch_id}` always has exactly one `:` between its parts.

Keys ({c} = encoded client, {b} = encoded batch_id, {e} = encoded external_id)
- `payouts:batch:{c}:{b}`             hash: fingerprint, state, counters, timestamps, the
                                       publisher that opened it and whether it is published
- `payouts:batch:{c}:{b}:items`       hash: index -> public item JSON (masked key, status, ...)
- `payouts:batch:{c}:{b}:orders`      hash: index -> what settle needs (full pix_key until the
                                       item is final, then only the terms digest); never shown
- `payouts:batch:{c}:{b}:publisher`   the publishing lease
- `payouts:claim:{c}:{e}`             hash: who holds or paid this external_id, with which terms
                                       (digest of amount, normalised PIX key, user id), the claim
                                       generation that feeds the idempotency key, and when the
                                       provider was last called under it
- `payouts:batches`                   sorted set: every `{c}:{b}` by creation time
- `payouts:client:{c}:batches`        sorted set: the client's `{b}` by creation time (ms), the
                                       history (GET /api/payouts) pages through it newest first
- `payouts:batches:open`              set: batches not yet completed (the sweeper's work list)
- `payouts:stats`                     hash: items that reached each final status, ever (metrics)
- `payouts:sweeper:lock`              one sweep at a time
- `payouts:webhook...`                webhook endpoints, events and deliveries: payouts_core/webhooks.py
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from typing import NamedTuple
from urllib.parse import unquote

import orjson
import redis

from payouts_core.model import Decision
from payouts_core.rules import (
    COUNTER,
    FINAL_STATUSES,
    TERMS_TAG_HEX,
    Action,
    encode_id,
    payout_terms,
    reuse_reason,
    same_terms,
)
from payouts_core.scripts import Transition
from payouts_core.text import as_str, utcnow

PREFIX = "payouts:"
ALL_BATCHES = PREFIX + "batches"
OPEN_BATCHES = PREFIX + "batches:open"
STATS = PREFIX + "stats"
SWEEP_LOCK = PREFIX + "sweeper:lock"
# Every state change's event, until the archiver has it in the ledger (payouts_core/ledger).
OUTBOX = PREFIX + "outbox"
BATCH_PREFIX = PREFIX + "batch:"
CLAIM_PREFIX = PREFIX + "claim:"
ARCHIVED_CLAIMS = PREFIX + "claims:"
COMPLETED_BATCHES = PREFIX + "batches:completed"
RETIRE_CHUNK = 1000
CLAIM_CHECK_CHUNK = 1000


#: Everything the Lua scripts know of the Python rules and keys, generated into each script's
#: prelude (payouts_core/scripts.py): change a rule or a key here, never in the Lua.
LUA_CONSTANTS = {
    "COUNTER": {status.value: name for status, name in COUNTER.items()},
    "FINAL": FINAL_STATUSES,
    "STATS": STATS,
    "OUTBOX": OUTBOX,
    "BATCH_PREFIX_LEN": len(BATCH_PREFIX),
    "CLAIM_PREFIX": CLAIM_PREFIX,
    "ARCHIVED_CLAIMS": ARCHIVED_CLAIMS,
    "TERMS_TAG_HEX": TERMS_TAG_HEX,
    "EXTERNAL_ID_REUSED": reuse_reason("%s")[0],
    "REUSE_REASON": reuse_reason("%s")[1],
}


class TransitionScript:
    """A store's attribute that runs the script it is named after (`_record_paid`: record_paid.lua,
    with LUA_CONSTANTS) on the store's `client`: the name is written once, so an attribute cannot
    point at another script. Built on first use, then kept in the store's own attributes."""

    def __set_name__(self, owner: type, attribute: str) -> None:
        self.attribute, self.script = attribute, attribute.removeprefix("_")

    def __get__(self, store, owner: type | None = None):
        if store is None:
            return self
        transition = store.__dict__[self.attribute] = Transition(store.client, self.script, LUA_CONSTANTS)
        return transition


class BatchConflict(Exception):
    """The batch_id exists with a different payload: a batch_id names one payload forever."""


class ExternalIdReused(Exception):
    """Items reuse an external_id that is paid or in flight with other terms (SPEC §5)."""

    def __init__(self, conflicts: list[tuple[int, str]]):
        super().__init__(f"{len(conflicts)} item(s) reuse an external_id with other terms")
        self.conflicts = conflicts  # (item index, where the external_id is held)


class BatchRef(NamedTuple):
    """One client's batch: the pair that names a batch everywhere (keys, tasks, listings)."""

    client: str
    batch_id: str

    @property
    def member(self) -> str:
        """`{client}:{batch_id}`, each part encoded: the batch's entry in the batch indexes."""
        return f"{encode_id(self.client)}:{encode_id(self.batch_id)}"

    @classmethod
    def from_member(cls, member: str | bytes) -> BatchRef:
        client, batch_id = as_str(member).split(":")
        return cls(unquote(client), unquote(batch_id))


@dataclass(frozen=True)
class Order:
    """One item as settle needs it (holds the full pix_key: never log or return it)."""

    index: int
    external_id: str
    user_id: str
    amount_cents: int
    pix_key: str
    pix_key_masked: str
    pix_key_type: str = ""

    @cached_property
    def terms(self) -> str:
        return payout_terms(self.amount_cents, self.pix_key, self.user_id)


def encode_cursor(*position: int | str) -> str:
    """An opaque page cursor: the position of the last entry a page examined."""
    raw = json.dumps(position, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *types: type) -> tuple:
    """The position `encode_cursor` wrote, each part of the given type; ValueError otherwise."""
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ValueError("not a cursor this API returned") from None
    if (not isinstance(position, list) or len(position) != len(types)
            or not all(type(p) is t for p, t in zip(position, types, strict=True))):
        raise ValueError("not a cursor this API returned")
    return tuple(position)


def _item_json(value: dict) -> bytes:
    """orjson's output as a bytes object of its own size: an orjson result keeps spare memory,
    and a batch keeps one per item until its write is sent (docs/BENCHMARKS.md, "API memory")."""
    return bytes(memoryview(orjson.dumps(value)))


def fingerprint(payload: dict) -> str:
    """A stable digest of a validated batch payload: same payload, same fingerprint."""
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def retired_batches_key(client: str) -> str:
    """The client's batches retired to the ledger: batch_id -> fingerprint (one payload forever)."""
    return f"{PREFIX}client:{encode_id(client)}:retired"


def client_batches_key(client: str) -> str:
    """The client's batch history: encoded batch_id -> creation time in ms."""
    return f"{PREFIX}client:{encode_id(client)}:batches"


def claim_key(client: str, external_id: str) -> str:
    return f"{CLAIM_PREFIX}{_encoded_client(client)}:{encode_id(external_id)}"


# A batch asks for 10,000 claim keys of one client: encode the client once.
_encoded_client = lru_cache(maxsize=1024)(encode_id)


def batch_keys(ref: BatchRef) -> tuple[str, str, str, str]:
    """The batch hash, its items, its orders and its publishing lease."""
    base = BATCH_PREFIX + ref.member
    return base, base + ":items", base + ":orders", base + ":publisher"


def _report_head(header: dict) -> dict:
    """The report's fields (SPEC §4) but its details, from the batch hash."""
    h = {as_str(k): as_str(v) for k, v in header.items()}
    head = {
        "batch_id": h["batch_id"],
        "status": "completed" if h["state"] == "completed" else "processing",
        "total": int(h["total"]),
        "processed": int(h["processed"]),
        "successful": int(h["successful"]),
        "failed": int(h["failed"]),
        "duplicates": int(h["duplicates"]),
        "created_at": h["created_at"],
        "completed_at": h["completed_at"] or None,
    }
    if h.get("submitted_by"):
        head["submitted_by"] = h["submitted_by"]
    return head


class PayoutStore:
    """Batches, item statuses and claims in Redis; every money-relevant write is atomic."""

    # One script per transition (payouts_core/model.py names the same steps).
    _begin_settlement = TransitionScript()
    _record_paid = TransitionScript()
    _record_failed = TransitionScript()
    _record_archived_duplicate = TransitionScript()
    _note_event = TransitionScript()
    _existing_batch = TransitionScript()
    _conflicting_claims = TransitionScript()
    _take_over_publishing = TransitionScript()
    _open_batch = TransitionScript()
    _discard_batch = TransitionScript()
    _complete_batch = TransitionScript()
    _retire_claims = TransitionScript()
    _retire_batch = TransitionScript()

    def __init__(self, client: redis.Redis):
        self.client = client

    @classmethod
    def from_url(cls, url: str, **kwargs) -> PayoutStore:
        return cls(redis.Redis.from_url(url, **kwargs))

    # -- accepting a batch -------------------------------------------------------------

    def create_batch(self, ref: BatchRef, payload_fingerprint: str, orders: Sequence[Order],
                     publish_lease_s: int = 60, lease_token: str | None = None) -> tuple[bool, str]:
        """Write a new batch in state `accepting`, or find the existing one.

        Returns (created, state). Raises BatchConflict when the batch exists with another
        payload, or when any of its keys exists without it (never write into foreign keys).
        WATCH makes the existence check and the write one atomic step against a racing POST.
        The creator holds a publishing lease (lease_token) so nobody else publishes it meanwhile.
        """
        batch_key, items_key, orders_key, lease_key = batch_keys(ref)
        first_seen: dict[str, int] = {}
        items, private = {}, {}
        for order in orders:
            public = {
                "external_id": order.external_id,
                "user_id": order.user_id,
                "amount_cents": order.amount_cents,
                "pix_key": order.pix_key_masked,
                "status": "pending",
                "attempts": 0,
            }
            if order.pix_key_type:
                public["pix_key_type"] = order.pix_key_type
            items[str(order.index)] = _item_json(public)
            record = {"external_id": order.external_id, "amount_cents": order.amount_cents,
                      "pix_key": order.pix_key, "terms": order.terms,
                      "claim": claim_key(ref.client, order.external_id)}
            if order.external_id in first_seen:  # a repeat waits for the previous occurrence
                record["wait_for"] = first_seen[order.external_id]
            first_seen[order.external_id] = order.index
            private[str(order.index)] = _item_json(record)

        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(batch_key, items_key, orders_key)
                    existing = orjson.loads(self._existing_batch(
                        [batch_key, items_key, orders_key, retired_batches_key(ref.client)],
                        client=pipe, batch_id=ref.batch_id))
                    if "fingerprint" in existing:
                        pipe.unwatch()
                        if existing["fingerprint"] != payload_fingerprint:
                            raise BatchConflict(ref.batch_id)
                        return False, existing["state"]
                    if existing["others"]:  # items or orders without their batch: never write into them
                        pipe.unwatch()
                        raise BatchConflict(ref.batch_id)
                    pipe.multi()
                    created = datetime.now(UTC)
                    pipe.hset(batch_key, mapping={
                        "batch_id": ref.batch_id,
                        "fingerprint": payload_fingerprint,
                        "state": "accepting",
                        "total": len(orders),
                        "processed": 0,
                        "successful": 0,
                        "failed": 0,
                        "duplicates": 0,
                        "created_at": utcnow(created),
                        "completed_at": "",
                        "submitted_by": ref.client,
                        "progress_ms": int(time.time() * 1000),
                        "events": 1,  # batch.accepted, below: the batch's event sequence
                    })
                    pipe.hset(items_key, mapping=items)
                    pipe.hset(orders_key, mapping=private)
                    pipe.set(lease_key, lease_token or uuid.uuid4().hex, ex=publish_lease_s)
                    # The items' own `accepted` events are this one: the archiver reads the
                    # items (written in this same transaction) when it archives it.
                    pipe.xadd(OUTBOX, {"e": orjson.dumps({
                        "m": ref.member, "i": -1, "t": "batch.accepted", "s": 1,
                        "at": int(created.timestamp() * 1000),
                        "d": {"fingerprint": payload_fingerprint, "total": len(orders)}})})
                    pipe.zadd(ALL_BATCHES, {ref.member: time.time()})
                    pipe.sadd(OPEN_BATCHES, ref.member)
                    pipe.zadd(client_batches_key(ref.client),
                              {encode_id(ref.batch_id): int(created.timestamp() * 1000)})
                    pipe.execute()
                    return True, "accepting"
                except redis.WatchError:
                    continue

    def batch_exists(self, ref: BatchRef) -> bool:
        """The batch is in Redis (live, or completed within its retention)."""
        return bool(self.client.exists(batch_keys(ref)[0]))

    def batch_id_taken(self, ref: BatchRef) -> bool:
        """The batch_id names a payload already: in Redis, or retired to the ledger."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.exists(batch_keys(ref)[0])
            pipe.hexists(retired_batches_key(ref.client), ref.batch_id)
            return any(pipe.execute())

    def conflicting_claims(self, client: str, orders: Sequence[Order]) -> list[tuple[int, str]]:
        """Items whose external_id is paid or in flight (in another batch) with other terms.

        A check at submission so the client hears of a reuse at once (422); settle enforces the
        same rule atomically for a batch that races past it.
        """
        unique = list(dict.fromkeys(o.external_id for o in orders))
        # Scripts of CLAIM_CHECK_CHUNK keys in one pipelined round trip: one script over a whole
        # batch would hold Redis for every other client (docs/BENCHMARKS.md).
        with self.client.pipeline(transaction=False) as pipe:
            for first in range(0, len(unique), CLAIM_CHECK_CHUNK):
                chunk = unique[first:first + CLAIM_CHECK_CHUNK]
                self._conflicting_claims([claim_key(client, e) for e in chunk], client=pipe,
                                         offset=first)
            replies = pipe.execute()
        held = {unique[c["position"] - 1]: (c["terms"], f"batch {c['batch_id']} item {c['index']}"
                                            if c["batch_id"] else "an archived payment")
                for reply in replies for c in orjson.loads(reply)}
        return [(o.index, held[o.external_id][1]) for o in orders
                if o.external_id in held and not same_terms(held[o.external_id][0], o.terms)]

    def take_over_publishing(self, ref: BatchRef, publish_lease_s: int = 60) -> str | None:
        """A new lease token when the batch is still `accepting` and its publisher's lease has
        expired; None otherwise."""
        batch_key, _, _, lease_key = batch_keys(ref)
        token = uuid.uuid4().hex
        taken = self._take_over_publishing([batch_key, lease_key], token=token, lease_s=publish_lease_s)
        return token if taken else None

    def open_batch(self, ref: BatchRef, publisher: str) -> bool:
        """Open the batch (settle may start) for the publisher holding its lease: True means this
        publisher publishes its chord. False for a batch published, gone, or taken over by
        another publisher (`open_batch.lua`): one chord per batch."""
        batch_key, _, _, lease_key = batch_keys(ref)
        return bool(self._open_batch([batch_key, lease_key], publisher=publisher,
                                     now_ms=int(time.time() * 1000)))

    def mark_published(self, ref: BatchRef) -> None:
        """Every message of the batch's chord is in the broker (a redelivered publish skips it)."""
        self.client.hset(batch_keys(ref)[0], "published", 1)

    def discard_batch(self, ref: BatchRef, lease_token: str) -> bool:
        """Remove a batch whose chord could not be published, if we still hold its lease."""
        keys = [*batch_keys(ref), ALL_BATCHES, OPEN_BATCHES, client_batches_key(ref.client)]
        return bool(self._discard_batch(keys, lease=lease_token, member=ref.member,
                                        encoded_batch_id=encode_id(ref.batch_id)))

    # -- settling one item -------------------------------------------------------------

    def begin_settlement(self, ref: BatchRef, index: int, max_attempts: int) -> Decision:
        """Take the external_id claim for this item, or say why it must wait or stop.

        `settle`: call the provider (attempt number `attempts`); `lookup`: the attempts are used
        up, only ask the provider what it holds under the claim's key.
        """
        reply = orjson.loads(self._begin_settlement(
            batch_keys(ref)[:3], index=index, batch_id=ref.batch_id, now=utcnow(),
            now_ms=int(time.time() * 1000), max_attempts=max_attempts))
        return Decision(Action(reply.pop("action")), **reply)

    def record_archived_duplicate(self, ref: BatchRef, index: int, duplicate_of: dict) -> str:
        """`duplicate` of a payment whose claim was archived, at the place the ledger names;
        'changed' when the claim is no longer that archived payment (decide again)."""
        return as_str(self._record_archived_duplicate(batch_keys(ref)[:3], index=index,
                                                      duplicate_of=duplicate_of))

    def record_paid(self, ref: BatchRef, index: int, e2e_id: str, claim_generation: int,
                    event: dict | None = None) -> str:
        """`event`: what the ledger's `paid` event adds (e.g. the call's duration_ms, via)."""
        return as_str(self._record_paid(batch_keys(ref)[:3], index=index, batch_id=ref.batch_id,
                                        now=utcnow(), e2e_id=e2e_id,
                                        claim_generation=claim_generation, event=event or {}))

    def record_failed(self, ref: BatchRef, index: int, code: str, reason: str,
                      event: dict | None = None) -> str:
        return as_str(self._record_failed(batch_keys(ref)[:3], index=index, batch_id=ref.batch_id,
                                          now=utcnow(), code=code, reason=reason, event=event or {}))

    def note_event(self, ref: BatchRef, index: int, event_type: str, attempt: int | None = None,
                   code: str | None = None, detail: dict | None = None) -> bool:
        """Record an event that changes no state (a provider error before its retry, a lookup's
        answer, a webhook delivered) in the batch's sequence; False for a batch that is gone."""
        return bool(self._note_event([batch_keys(ref)[0]], index=index, type=event_type,
                                     attempt=attempt, code=code or None, detail=detail or {}))

    def complete_batch(self, ref: BatchRef) -> tuple[str, ...]:
        """Mark the batch completed (idempotent); ('incomplete', processed, total) otherwise."""
        reply = orjson.loads(self._complete_batch(
            [batch_keys(ref)[0], OPEN_BATCHES, COMPLETED_BATCHES], now=utcnow(), member=ref.member))
        if reply["result"] == "incomplete":
            return reply["result"], str(reply["processed"]), str(reply["total"])
        return (reply["result"],)

    # -- reading -----------------------------------------------------------------------

    def report_json(self, ref: BatchRef) -> str | None:
        """The batch report (SPEC §4) as a JSON string, or None for an unknown batch.

        Item entries are stored as JSON already, so a 10,000-item report is joined, not re-encoded.
        """
        batch_key, items_key, _, _ = batch_keys(ref)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(batch_key)
            pipe.hgetall(items_key)
            header, items = pipe.execute()
        if not header:
            return None
        details = [as_str(v) for _, v in sorted(items.items(), key=lambda kv: int(kv[0]))]
        head = json.dumps(_report_head(header), separators=(",", ":"))
        return head[:-1] + ',"details":[' + ",".join(details) + "]}"

    def summary(self, ref: BatchRef) -> dict | None:
        """The report without its details: one small read, whatever the batch's size."""
        header = self.client.hgetall(batch_keys(ref)[0])
        return _report_head(header) if header else None

    def report(self, ref: BatchRef) -> dict | None:
        raw = self.report_json(ref)
        return None if raw is None else json.loads(raw)

    def amounts_by_status(self, ref: BatchRef) -> dict[str, int]:
        """Cents per item status (paid, failed, ...): the batch.completed event's amounts."""
        totals: dict[str, int] = {}
        for raw in self.client.hvals(batch_keys(ref)[1]):
            item = json.loads(raw)
            totals[item["status"]] = totals.get(item["status"], 0) + item["amount_cents"]
        return totals

    def item_terms(self, ref: BatchRef) -> dict[int, str]:
        """Index -> terms digest of every item (reconciliation compares duplicates with them)."""
        orders = self.client.hgetall(batch_keys(ref)[2])
        return {int(k): json.loads(v)["terms"] for k, v in orders.items()}

    def batch_state(self, ref: BatchRef) -> str | None:
        return as_str(self.client.hget(batch_keys(ref)[0], "state"))

    def stats(self) -> dict:
        """Service-wide totals for metrics: items by final status and open batches."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(STATS)
            pipe.scard(OPEN_BATCHES)
            items, open_batches = pipe.execute()
        return {"items": {as_str(k): int(v) for k, v in items.items()}, "open_batches": open_batches}

    def all_batches(self, client: str | None = None) -> list[BatchRef]:
        """Every batch by creation time; one client's when `client` is given."""
        return _of_client((BatchRef.from_member(m) for m in self.client.zrange(ALL_BATCHES, 0, -1)),
                          client)

    def open_batches(self) -> list[BatchRef]:
        return sorted(BatchRef.from_member(m) for m in self.client.smembers(OPEN_BATCHES))

    def batch_progress(self, ref: BatchRef) -> dict | None:
        """State, counters and the time (ms) an item last reached a final state."""
        fields = ("state", "total", "processed", "progress_ms")
        values = self.client.hmget(batch_keys(ref)[0], *fields)
        if values[0] is None:
            return None
        info = dict(zip(fields, (as_str(v) for v in values), strict=True))
        return {"state": info["state"], "total": int(info["total"]),
                "processed": int(info["processed"]), "progress_ms": int(info["progress_ms"] or 0)}

    def unfinished_indexes(self, ref: BatchRef) -> list[int]:
        """Items not yet in a final state, in submission order."""
        items = self.client.hgetall(batch_keys(ref)[1])
        return sorted(int(k) for k, v in items.items() if json.loads(v)["status"] not in FINAL_STATUSES)

    # -- retention (the ledger holds it all: Redis lets go) --------------------------------

    def completed_before(self, before_ms: int, limit: int) -> list[BatchRef]:
        """Completed batches, oldest completion first, completed before `before_ms`."""
        members = self.client.zrangebyscore(COMPLETED_BATCHES, "-inf", before_ms, start=0, num=limit)
        return [BatchRef.from_member(m) for m in members]

    def retention_facts(self, ref: BatchRef) -> dict | None:
        """What the ledger must hold before the batch may leave Redis: its event count (the
        batch's own sequence), counters and state."""
        fields = ("state", "events", "total", "processed", "successful", "failed", "duplicates")
        values = self.client.hmget(batch_keys(ref)[0], *fields)
        if values[0] is None:
            return None
        return {"state": as_str(values[0]), **{f: int(v or 0) for f, v in zip(fields[1:], values[1:],
                                                                            strict=True)}}

    def retire_later(self, ref: BatchRef, at_ms: int) -> None:
        """Look at this batch's retirement again once `at_ms` is past retention (the ledger did
        not hold it yet): the batches behind it are not held up meanwhile."""
        self.client.zadd(COMPLETED_BATCHES, {ref.member: at_ms}, xx=True)

    def retire(self, ref: BatchRef, events: int) -> bool:
        """Shrink the batch's final claims to archived claims, then delete its keys, each step
        refused if the batch changed since the ledger was found to hold `events` of it."""
        total = int(self.client.hget(batch_keys(ref)[0], "total") or 0)
        batch_key, _, orders_key, _ = batch_keys(ref)
        # Chunks: one script over a 10,000-item batch would hold Redis for every other client.
        for first in range(0, total, RETIRE_CHUNK):
            last = min(first + RETIRE_CHUNK, total) - 1
            if self._retire_claims([batch_key, orders_key], events=events, batch_id=ref.batch_id,
                                   first=first, last=last) == -1:
                return False
        keys = [*batch_keys(ref), ALL_BATCHES, client_batches_key(ref.client), COMPLETED_BATCHES,
                retired_batches_key(ref.client)]
        return bool(self._retire_batch(keys, events=events, member=ref.member,
                                       encoded_batch_id=encode_id(ref.batch_id),
                                       batch_id=ref.batch_id))

    def try_sweep_lock(self, ttl_s: int) -> bool:
        """Take the sweeper's lock (expires by itself if the sweeper dies)."""
        return bool(self.client.set(SWEEP_LOCK, "1", nx=True, ex=ttl_s))

    def release_sweep_lock(self) -> None:
        self.client.delete(SWEEP_LOCK)

    def touch_progress(self, ref: BatchRef) -> None:
        """Note that the batch was just (re)driven, so the sweeper leaves it alone for a while."""
        self.client.hset(batch_keys(ref)[0], "progress_ms", int(time.time() * 1000))

    # -- listings (history, items by status) ----------------------------------------------

    def history(self, client: str, limit: int, after: tuple[int, str] | None = None,
                status: str | None = None, newest_ms: int | None = None,
                oldest_ms: int | None = None) -> tuple[list[dict], tuple[int, str] | None]:
        """The client's batch summaries, newest first, and the position to continue from.

        The position is (creation ms, encoded batch_id) of the last batch examined: batches
        created later sort before it, so a walk never repeats or skips one while new ones arrive.
        """
        def summaries(members: list[str]) -> list[dict | None]:
            with self.client.pipeline(transaction=False) as pipe:
                for member in members:
                    pipe.hgetall(batch_keys(BatchRef(client, unquote(member)))[0])
                heads = [_report_head(h) if h else None for h in pipe.execute()]
            return [h if h and (status is None or h["status"] == status) else None for h in heads]

        return newest_first(self.client, client_batches_key(client), limit, after, summaries,
                            newest_ms, oldest_ms)

    def batch_items(self, ref: BatchRef, limit: int, start: int = 0, status: str | None = None,
                    chunk: int = 500, max_scan: int | None = None) -> tuple[list[dict], int | None] | None:
        """Items from index `start` on (with their `index`), only those in `status` when given,
        and the index to continue from (None at the end); None for an unknown batch. At most
        `max_scan` items are examined per call (a filter matching nothing would otherwise decode
        the whole batch): the page may then be short, with an index to continue from."""
        batch_key, items_key, _, _ = batch_keys(ref)
        total = self.client.hget(batch_key, "total")
        if total is None:
            return None
        total, found = int(total), []
        end = total if max_scan is None else min(total, start + max_scan)
        for first in range(start, end, chunk):
            indexes = range(first, min(first + chunk, end))
            for index, raw in zip(indexes, self.client.hmget(items_key, [str(i) for i in indexes]),
                                  strict=True):
                item = json.loads(raw)
                if status is None or item["status"] == status:
                    found.append({"index": index, **item})
                    if len(found) == limit:
                        return found, (index + 1 if index + 1 < total else None)
        return found, (end if end < total else None)


def _of_client(refs: Iterable[BatchRef], client: str | None) -> list[BatchRef]:
    return [r for r in refs if client is None or r.client == client]


def _entries_after(r: redis.Redis, key: str, after: tuple[int, str] | None, newest: int | None,
                   oldest: int | None, n: int) -> list[tuple[str, int]]:
    """Up to n (member, score) of a sorted set in descending (score, member) order, strictly
    after `after`; members of one score sort by their bytes, as Redis orders them."""
    if after is not None and newest is not None and after[0] > newest:
        after = None
    lo = "-inf" if oldest is None else oldest
    found: list[tuple[str, int]] = []
    if after is None:
        hi: int | str = "+inf" if newest is None else newest
    else:
        score, member = after
        if oldest is None or score >= oldest:
            ties = r.zrevrangebyscore(key, score, score)
            found = [(m, score) for m in map(as_str, ties) if m < member][:n]
        hi = f"({score}"
    if len(found) < n:
        rows = r.zrevrangebyscore(key, hi, lo, start=0, num=n - len(found), withscores=True)
        found += [(as_str(m), int(score)) for m, score in rows]
    return found


def newest_first(r: redis.Redis, key: str, limit: int, after: tuple[int, str] | None,
                 load: Callable[[list[str]], list], newest: int | None = None,
                 oldest: int | None = None, chunk: int = 100,
                 scan_max: int = 2000) -> tuple[list, tuple[int, str] | None]:
    """One page of a sorted set indexed by time, newest first: `load` turns members into
    entries (None = filtered out). Returns the entries and the position of the last member
    examined when more may follow. At most `scan_max` members are examined per page, so a
    filter that matches little costs a bounded read; the page is then short, with a cursor."""
    page: list = []
    position, examined = after, 0
    while len(page) < limit and examined < scan_max:
        want = min(chunk, max(limit - len(page), 20))  # a filter may drop some
        entries = _entries_after(r, key, position, newest, oldest, want)
        if not entries:
            return page, None
        for (member, score), loaded in zip(entries, load([m for m, _ in entries]), strict=True):
            examined += 1
            position = (score, member)
            if loaded is not None:
                page.append(loaded)
                if len(page) == limit:
                    break
    more = bool(_entries_after(r, key, position, newest, oldest, 1))
    return page, position if more else None
