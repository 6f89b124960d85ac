"""The money rules and their Redis keys: batches, item statuses and external_id claims.

This module is the only writer of the `payouts:` keys. Every state change that money depends
on is one Lua script, so a crash or a redelivered task can never leave a claim, an item and
the batch counters disagreeing.

Keys
- `payouts:batch:{batch_id}`          hash: fingerprint, state, counters, timestamps
- `payouts:batch:{batch_id}:items`    hash: index -> public item JSON (masked key, status, ...)
- `payouts:batch:{batch_id}:orders`   hash: index -> what settle needs (full pix_key); never shown
- `payouts:claim:{external_id}`       hash: who holds or paid this external_id, and the
                                       claim generation that feeds the idempotency key
- `payouts:batches`                   sorted set: every batch_id by creation time (reconciliation)
- `payouts:batches:open`              set: batches not yet completed (the sweeper's work list)
- `payouts:stats`                     hash: items that reached each final status, ever (metrics)
- `payouts:sweeper:lock`              one sweep at a time
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

PREFIX = "payouts:"
CLAIM_PREFIX = PREFIX + "claim:"
ALL_BATCHES = PREFIX + "batches"
OPEN_BATCHES = PREFIX + "batches:open"
STATS = PREFIX + "stats"
SWEEP_LOCK = PREFIX + "sweeper:lock"
FINAL_STATUSES = ("paid", "failed", "duplicate")

# Shared Lua: decode an item, move it to a final status and bump the counters together.
_LUA_COMMON = """
local FINAL = {paid=true, failed=true, duplicate=true}
local COUNTER = {paid='successful', failed='failed', duplicate='duplicates'}
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function finish(batch_key, items_key, idx, item, status)
  item.status = status
  redis.call('HSET', items_key, idx, cjson.encode(item))
  redis.call('HINCRBY', batch_key, 'processed', 1)
  redis.call('HINCRBY', batch_key, COUNTER[status], 1)
  redis.call('HSET', batch_key, 'progress_ms', now_ms())
  redis.call('HINCRBY', '$STATS', status, 1)
end
""".replace("$STATS", STATS)

# KEYS: batch, items, orders. ARGV: index, claim prefix, batch_id, now.
# Decides what the settle task does next and takes the external_id claim atomically.
_BEGIN_SETTLEMENT = _LUA_COMMON + """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'orphan'} end
if state == 'accepting' then return {'not_ready'} end
local idx = ARGV[1]
local item = cjson.decode(redis.call('HGET', KEYS[2], idx))
if FINAL[item.status] then return {'final', item.status} end
local order_raw = redis.call('HGET', KEYS[3], idx)
local order = cjson.decode(order_raw)

if order.wait_for then
  local prior = cjson.decode(redis.call('HGET', KEYS[2], tostring(order.wait_for)))
  if not FINAL[prior.status] then
    return {'wait', ARGV[3], tostring(order.wait_for)}
  end
  if prior.status == 'paid' then
    item.duplicate_of = {batch_id=ARGV[3], index=order.wait_for, e2e_id=prior.e2e_id}
    finish(KEYS[1], KEYS[2], idx, item, 'duplicate')
    return {'duplicate'}
  end
  if prior.status == 'duplicate' then
    item.duplicate_of = prior.duplicate_of
    finish(KEYS[1], KEYS[2], idx, item, 'duplicate')
    return {'duplicate'}
  end
end

local claim_key = ARGV[2] .. order.external_id
local c = redis.call('HMGET', claim_key, 'state', 'batch_id', 'index', 'gen', 'e2e_id')
local mine = (c[2] == ARGV[3] and c[3] == idx)
if c[1] == 'paid' then
  if mine then
    item.e2e_id = c[5]
    finish(KEYS[1], KEYS[2], idx, item, 'paid')
    return {'final', 'paid'}
  end
  item.duplicate_of = {batch_id=c[2], index=tonumber(c[3]), e2e_id=c[5]}
  finish(KEYS[1], KEYS[2], idx, item, 'duplicate')
  return {'duplicate'}
end
if c[1] == 'inflight' and not mine then
  return {'wait', c[2], c[3]}
end
local gen = tonumber(c[4]) or 0
if c[1] ~= 'inflight' then
  gen = gen + 1
  redis.call('HSET', claim_key, 'state', 'inflight', 'batch_id', ARGV[3], 'index', idx,
             'gen', gen, 'claimed_at', ARGV[4])
end
item.status = 'processing'
item.attempts = (item.attempts or 0) + 1
redis.call('HSET', KEYS[2], idx, cjson.encode(item))
return {'settle', tostring(gen), order_raw, tostring(item.attempts)}
"""

# KEYS: batch, items. ARGV: index, claim prefix, batch_id, outcome, now, then
# e2e_id and claim generation (paid) or failure code and reason (failed). Records the outcome once.
_RECORD_OUTCOME = _LUA_COMMON + """
local idx = ARGV[1]
local raw = redis.call('HGET', KEYS[2], idx)
if not raw then return {'orphan'} end
local item = cjson.decode(raw)
local claim_key = ARGV[2] .. item.external_id
local outcome = ARGV[4]
if FINAL[item.status] then
  if outcome ~= 'paid' or item.status ~= 'failed' then return {item.status} end
  -- A late success under this item's own claim (a concurrent delivery was still paying when
  -- another gave up): money moved, so the item is paid, unless the external_id was claimed
  -- again since (then reconciliation reports the second payment).
  local c = redis.call('HMGET', claim_key, 'state', 'batch_id', 'index', 'gen')
  if not (c[1] == 'failed' and c[2] == ARGV[3] and c[3] == idx and c[4] == ARGV[7]) then
    return {item.status}
  end
  redis.call('HINCRBY', KEYS[1], 'failed', -1)
  redis.call('HINCRBY', KEYS[1], 'processed', -1)
  redis.call('HINCRBY', '$STATS', 'failed', -1)
end
if outcome == 'paid' then
  -- The provider settled under this item's idempotency key: the money moved for this item.
  redis.call('HSET', claim_key, 'state', 'paid', 'batch_id', ARGV[3], 'index', idx,
             'e2e_id', ARGV[6], 'paid_at', ARGV[5])
  item.e2e_id = ARGV[6]
  item.failure_code = nil
  item.failure_reason = nil
else
  local c = redis.call('HMGET', claim_key, 'state', 'batch_id', 'index')
  if c[1] == 'inflight' and c[2] == ARGV[3] and c[3] == idx then
    redis.call('HSET', claim_key, 'state', 'failed', 'failed_at', ARGV[5])
  end
  item.failure_code = ARGV[6]
  item.failure_reason = ARGV[7]
end
finish(KEYS[1], KEYS[2], idx, item, outcome)
return {outcome}
""".replace("$STATS", STATS)

# KEYS: batch, publisher lease. ARGV: lease seconds, token. A publisher that died before opening
# its batch leaves it `accepting`; once its lease expired, the next replay may publish it again.
_TAKE_OVER_PUBLISHING = """
if redis.call('HGET', KEYS[1], 'state') ~= 'accepting' then return 0 end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'EX', ARGV[1]) then return 1 end
return 0
"""

# KEYS: batch, items, orders, lease, all batches, open batches. ARGV: token, batch_id.
# Deletes a batch whose publishing failed, only while its publisher still holds the lease: once
# another process took the batch over and published it, its settle tasks may be paying.
_DISCARD_BATCH = """
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'state') ~= 'accepting' then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[5], ARGV[2])
redis.call('SREM', KEYS[6], ARGV[2])
return 1
"""

# KEYS: batch, open-batches set. ARGV: now, batch_id. Completes the batch once every item is final.
_COMPLETE_BATCH = """
local b = redis.call('HMGET', KEYS[1], 'state', 'processed', 'total')
if not b[1] then return {'orphan'} end
if b[1] == 'completed' then return {'completed'} end
if tonumber(b[2]) < tonumber(b[3]) then return {'incomplete', b[2], b[3]} end
redis.call('HSET', KEYS[1], 'state', 'completed', 'completed_at', ARGV[1])
redis.call('SREM', KEYS[2], ARGV[2])
return {'completed'}
"""


class BatchConflict(Exception):
    """The batch_id exists with a different payload: a batch_id names one payload forever."""


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


@dataclass(frozen=True)
class Decision:
    """What begin_settlement decided for one item."""

    action: str  # settle | wait | duplicate | final | not_ready | orphan
    claim_generation: int = 0
    attempts: int = 0
    order: dict | None = None
    waiting_on: str | None = None


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def fingerprint(payload: dict) -> str:
    """A stable digest of a validated batch payload: same payload, same fingerprint."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def idempotency_key(external_id: str, claim_generation: int) -> str:
    """The provider key for one claim of an external_id.

    A redelivered task reuses its claim's generation, so the provider returns the original
    transfer; a later batch re-trying a failed external_id gets a new generation (new key).
    """
    return f"payout:{external_id}:{claim_generation}"


def _batch_key(batch_id: str) -> str:
    return f"{PREFIX}batch:{batch_id}"


def _keys(batch_id: str) -> tuple[str, str, str]:
    base = _batch_key(batch_id)
    return base, base + ":items", base + ":orders"


def _lease_key(batch_id: str) -> str:
    return _batch_key(batch_id) + ":publisher"


def _s(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _report_head(header: dict) -> dict:
    """The report's fields (SPEC §4) but its details, from the batch hash."""
    h = {_s(k): _s(v) for k, v in header.items()}
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

    def __init__(self, client: redis.Redis):
        self.client = client
        self._begin = client.register_script(_BEGIN_SETTLEMENT)
        self._record = client.register_script(_RECORD_OUTCOME)
        self._complete = client.register_script(_COMPLETE_BATCH)
        self._take_over = client.register_script(_TAKE_OVER_PUBLISHING)
        self._discard = client.register_script(_DISCARD_BATCH)

    @classmethod
    def from_url(cls, url: str, **kwargs) -> PayoutStore:
        return cls(redis.Redis.from_url(url, **kwargs))

    # -- accepting a batch -------------------------------------------------------------

    def create_batch(self, batch_id: str, payload_fingerprint: str, orders: Sequence[Order],
                     submitted_by: str = "", publish_lease_s: int = 60,
                     lease_token: str | None = None) -> tuple[bool, str]:
        """Write a new batch in state `accepting`, or find the existing one.

        Returns (created, state). Raises BatchConflict when batch_id exists with another payload.
        WATCH makes the existence check and the write one atomic step against a racing POST.
        The creator holds a publishing lease (lease_token) so nobody else publishes it meanwhile.
        """
        batch_key, items_key, orders_key = _keys(batch_id)
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
            items[str(order.index)] = json.dumps(public, separators=(",", ":"))
            record = {"external_id": order.external_id, "amount_cents": order.amount_cents,
                      "pix_key": order.pix_key}
            if order.external_id in first_seen:  # a repeat waits for the previous occurrence
                record["wait_for"] = first_seen[order.external_id]
            first_seen[order.external_id] = order.index
            private[str(order.index)] = json.dumps(record, separators=(",", ":"))

        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(batch_key)
                    existing = pipe.hmget(batch_key, "fingerprint", "state")
                    if existing[0] is not None:
                        pipe.unwatch()
                        if _s(existing[0]) != payload_fingerprint:
                            raise BatchConflict(batch_id)
                        return False, _s(existing[1])
                    pipe.multi()
                    pipe.hset(batch_key, mapping={
                        "batch_id": batch_id,
                        "fingerprint": payload_fingerprint,
                        "state": "accepting",
                        "total": len(orders),
                        "processed": 0,
                        "successful": 0,
                        "failed": 0,
                        "duplicates": 0,
                        "created_at": utcnow(),
                        "completed_at": "",
                        "submitted_by": submitted_by,
                        "progress_ms": int(time.time() * 1000),
                    })
                    pipe.hset(items_key, mapping=items)
                    pipe.hset(orders_key, mapping=private)
                    pipe.set(_lease_key(batch_id), lease_token or uuid.uuid4().hex, ex=publish_lease_s)
                    pipe.zadd(ALL_BATCHES, {batch_id: time.time()})
                    pipe.sadd(OPEN_BATCHES, batch_id)
                    pipe.execute()
                    return True, "accepting"
                except redis.WatchError:
                    continue

    def take_over_publishing(self, batch_id: str, publish_lease_s: int = 60) -> bool:
        """True when the batch is still `accepting` and its publisher's lease has expired."""
        return bool(self._take_over(keys=[_batch_key(batch_id), _lease_key(batch_id)],
                                    args=[publish_lease_s, uuid.uuid4().hex]))

    def open_batch(self, batch_id: str) -> None:
        """The chord is published: let the settle tasks start."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(_batch_key(batch_id), mapping={"state": "processing",
                                                      "progress_ms": int(time.time() * 1000)})
            pipe.delete(_lease_key(batch_id))
            pipe.execute()

    def discard_batch(self, batch_id: str, lease_token: str) -> bool:
        """Remove a batch whose chord could not be published, if we still hold its lease."""
        keys = [*_keys(batch_id), _lease_key(batch_id), ALL_BATCHES, OPEN_BATCHES]
        return bool(self._discard(keys=keys, args=[lease_token, batch_id]))

    # -- settling one item -------------------------------------------------------------

    def begin_settlement(self, batch_id: str, index: int) -> Decision:
        """Take the external_id claim for this item, or say why it must wait or stop."""
        reply = [_s(x) for x in self._begin(keys=_keys(batch_id),
                                             args=[index, CLAIM_PREFIX, batch_id, utcnow()])]
        action = reply[0]
        if action == "settle":
            return Decision("settle", claim_generation=int(reply[1]),
                            order=json.loads(reply[2]), attempts=int(reply[3]))
        if action == "wait":
            return Decision("wait", waiting_on=f"{reply[1]}#{reply[2]}")
        return Decision(action)

    def record_paid(self, batch_id: str, index: int, e2e_id: str, claim_generation: int) -> str:
        return self._record_outcome(batch_id, index, "paid", e2e_id, str(claim_generation))

    def record_failed(self, batch_id: str, index: int, code: str, reason: str) -> str:
        return self._record_outcome(batch_id, index, "failed", code, reason)

    def _record_outcome(self, batch_id: str, index: int, outcome: str, *details: str) -> str:
        batch_key, items_key, _ = _keys(batch_id)
        reply = self._record(keys=[batch_key, items_key],
                             args=[index, CLAIM_PREFIX, batch_id, outcome, utcnow(), *details])
        return _s(reply[0])

    def complete_batch(self, batch_id: str) -> tuple[str, ...]:
        """Mark the batch completed (idempotent); ('incomplete', processed, total) otherwise."""
        reply = self._complete(keys=[_batch_key(batch_id), OPEN_BATCHES], args=[utcnow(), batch_id])
        return tuple(_s(x) for x in reply)

    # -- reading -----------------------------------------------------------------------

    def report_json(self, batch_id: str) -> str | None:
        """The batch report (SPEC §4) as a JSON string, or None for an unknown batch.

        Item entries are stored as JSON already, so a 10,000-item report is joined, not re-encoded.
        """
        batch_key, items_key, _ = _keys(batch_id)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(batch_key)
            pipe.hgetall(items_key)
            header, items = pipe.execute()
        if not header:
            return None
        details = [_s(v) for _, v in sorted(items.items(), key=lambda kv: int(kv[0]))]
        head = json.dumps(_report_head(header), separators=(",", ":"))
        return head[:-1] + ',"details":[' + ",".join(details) + "]}"

    def summary(self, batch_id: str) -> dict | None:
        """The report without its details: one small read, whatever the batch's size."""
        header = self.client.hgetall(_batch_key(batch_id))
        return _report_head(header) if header else None

    def report(self, batch_id: str) -> dict | None:
        raw = self.report_json(batch_id)
        return None if raw is None else json.loads(raw)

    def batch_state(self, batch_id: str) -> str | None:
        return _s(self.client.hget(_batch_key(batch_id), "state"))

    def stats(self) -> dict:
        """Service-wide totals for metrics: items by final status and open batches."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(STATS)
            pipe.scard(OPEN_BATCHES)
            items, open_batches = pipe.execute()
        return {"items": {_s(k): int(v) for k, v in items.items()}, "open_batches": open_batches}

    def all_batch_ids(self) -> list[str]:
        return [_s(b) for b in self.client.zrange(ALL_BATCHES, 0, -1)]

    def open_batch_ids(self) -> list[str]:
        return sorted(_s(b) for b in self.client.smembers(OPEN_BATCHES))

    def batch_progress(self, batch_id: str) -> dict | None:
        """State, counters and the time (ms) an item last reached a final state."""
        fields = ("state", "total", "processed", "progress_ms")
        values = self.client.hmget(_batch_key(batch_id), *fields)
        if values[0] is None:
            return None
        info = dict(zip(fields, (_s(v) for v in values), strict=True))
        return {"state": info["state"], "total": int(info["total"]),
                "processed": int(info["processed"]), "progress_ms": int(info["progress_ms"] or 0)}

    def unfinished_indexes(self, batch_id: str) -> list[int]:
        """Items not yet in a final state, in submission order."""
        items = self.client.hgetall(_keys(batch_id)[1])
        return sorted(int(k) for k, v in items.items() if json.loads(v)["status"] not in FINAL_STATUSES)

    def try_sweep_lock(self, ttl_s: int) -> bool:
        """Take the sweeper's lock (expires by itself if the sweeper dies)."""
        return bool(self.client.set(SWEEP_LOCK, "1", nx=True, ex=ttl_s))

    def release_sweep_lock(self) -> None:
        self.client.delete(SWEEP_LOCK)

    def touch_progress(self, batch_id: str) -> None:
        """Note that the batch was just (re)driven, so the sweeper leaves it alone for a while."""
        self.client.hset(_batch_key(batch_id), "progress_ms", int(time.time() * 1000))

    def claim(self, external_id: str) -> dict:
        return {_s(k): _s(v) for k, v in self.client.hgetall(CLAIM_PREFIX + external_id).items()}
