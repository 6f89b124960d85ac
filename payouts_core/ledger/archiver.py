"""The archiver: copies the outbox's events into the ledger, idempotently, in order.

One archiver is active at a time (a lease in Redis; others wait), so a batch's `accepted` is
always archived before its items' events. Each pass reads the oldest outbox entries (XRANGE:
the stream holds only what is not yet archived), writes them in one PostgreSQL transaction, and
deletes them from the stream only after the commit. A crash between the two replays the same
entries next time; every write is keyed on (client, batch_id, seq, idx) or guarded by `last_seq`,
so a replay changes nothing. PostgreSQL down: the entries stay in the stream (settlement does not
wait on the ledger) and are archived when it is back.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import orjson
import psycopg
import redis

from payouts_core.store import OUTBOX, PREFIX, BatchRef, batch_keys

log = logging.getLogger(__name__)

LEASE_KEY = PREFIX + "archiver:lease"
# Entries the ledger refused on their own (undecodable, or a row a constraint rejects): set
# aside with the error, alerted on, never silently dropped and never blocking the others.
DEAD_LETTERS = PREFIX + "outbox:dead"
FINAL_DETAIL = ("e2e_id", "failure_reason", "duplicate_of")

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""


@dataclass(frozen=True)
class Event:
    """One outbox entry, decoded."""

    entry_id: bytes
    ref: BatchRef
    seq: int
    idx: int
    type: str
    at_ms: int
    attempt: int | None
    code: str | None
    detail: dict
    item: dict | None

    @classmethod
    def decode(cls, entry_id: bytes, fields: dict) -> Event:
        e = orjson.loads(fields[b"e"])
        return cls(entry_id, BatchRef.from_member(e["m"]), int(e["s"]), int(e["i"]), e["t"],
                   int(e["at"]), e.get("a"), e.get("k"), e.get("d") or {}, e.get("item"))


class Archiver:
    """Drains the outbox into PostgreSQL; `run()` loops, `drain_once()` is one pass (tests)."""

    def __init__(self, r: redis.Redis, database_url: str, batch_size: int = 5000,
                 lease_ms: int = 15000):
        self.redis = r
        self.database_url = database_url
        self.batch_size = batch_size
        self.lease_ms = lease_ms
        self.token = uuid.uuid4().hex
        self._renew = r.register_script(_RENEW)
        self._conn: psycopg.Connection | None = None

    def hold_lease(self) -> bool:
        """Take or keep the one-active-archiver lease."""
        return bool(self._renew(keys=[LEASE_KEY], args=[self.token, self.lease_ms]))

    def release_lease(self) -> None:
        if self.redis.get(LEASE_KEY) == self.token.encode():
            self.redis.delete(LEASE_KEY)

    def connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.database_url, connect_timeout=5)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def drain_once(self) -> int:
        """Archive up to batch_size of the oldest events; returns how many were archived."""
        entries = self.redis.xrange(OUTBOX, count=self.batch_size)
        if not entries:
            return 0
        try:
            events = [Event.decode(entry_id, fields) for entry_id, fields in entries]
            self._commit(events)
        except (psycopg.OperationalError, redis.ConnectionError):
            raise
        except Exception:  # one bad entry must not stop the archive: find it, set it aside
            log.exception("archiver: a pass failed; archiving its entries one by one")
            events = self._one_by_one(entries)
        # Only now: the events are committed. A crash before this line replays them (no-ops).
        if events:
            self.redis.xdel(OUTBOX, *(e.entry_id for e in events))
        now_ms = time.time() * 1000
        from payouts_core.ledger.metrics import ARCHIVE_LAG, ARCHIVED  # noqa: PLC0415
        for event in events:
            ARCHIVE_LAG.observe(max(0.0, now_ms - event.at_ms) / 1000)
        ARCHIVED.inc(len(events))
        return len(events)

    def _commit(self, events: list[Event]) -> None:
        conn = self.connection()
        try:
            with conn.transaction():
                self._write(conn, events)
        except psycopg.OperationalError:
            self.close()
            raise

    def _one_by_one(self, entries: list) -> list[Event]:
        """Archive entries one at a time; move each that fails alone to the dead letters."""
        from payouts_core.ledger.metrics import DEAD_LETTERED  # noqa: PLC0415

        archived = []
        for entry_id, fields in entries:
            try:
                event = Event.decode(entry_id, fields)
                self._commit([event])
                archived.append(event)
            except (psycopg.OperationalError, redis.ConnectionError):
                raise
            except Exception as exc:
                log.critical("archiver: outbox entry refused by the ledger; set aside in %s",
                             DEAD_LETTERS, extra={"entry": entry_id.decode(), "error": repr(exc)})
                with self.redis.pipeline(transaction=True) as pipe:
                    pipe.xadd(DEAD_LETTERS, {**fields, b"error": repr(exc)[:500],
                                             b"entry": entry_id})
                    pipe.xdel(OUTBOX, entry_id)
                    pipe.execute()
                DEAD_LETTERED.inc()
        return archived

    def run(self, idle_sleep_s: float = 0.2, stop=lambda: False) -> None:
        """Archive until `stop()`: one active archiver; a PostgreSQL outage is waited out."""
        backoff = 0.5
        while not stop():
            try:
                if not self.hold_lease():
                    time.sleep(self.lease_ms / 3000)
                    continue
                if self.drain_once() == 0:
                    time.sleep(idle_sleep_s)
                backoff = 0.5
            except (psycopg.Error, redis.ConnectionError) as exc:
                log.warning("archiver: %s unavailable; retrying in %.1f s",
                            "PostgreSQL" if isinstance(exc, psycopg.Error) else "Redis", backoff,
                            extra={"error": type(exc).__name__})
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        self.release_lease()
        self.close()

    # -- writing ---------------------------------------------------------------------------

    def _write(self, conn: psycopg.Connection, events: list[Event]) -> None:
        item_events = []
        for event in events:  # batch events in order: a discard before a re-accept stays so
            if event.idx >= 0:
                item_events.append(event)
            elif event.type == "batch.accepted":
                self._accepted(conn, event)
            elif event.type == "batch.discarded":
                conn.execute("DELETE FROM batches WHERE client = %s AND batch_id = %s", event.ref)
            else:
                self._batch_event(conn, event)
        if item_events:
            self._item_events(conn, item_events)

    def _accepted(self, conn: psycopg.Connection, event: Event) -> None:
        """The batch row, its items and their `accepted` events, from the batch's Redis keys
        (written in the transaction that appended this event)."""
        batch_key, items_key, orders_key, _ = batch_keys(event.ref)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(batch_key)
            pipe.hgetall(items_key)
            pipe.hgetall(orders_key)
            header, items, orders = pipe.execute()
        header = {k.decode(): v.decode() for k, v in header.items()}
        if header.get("fingerprint") != event.detail.get("fingerprint"):
            return  # that incarnation was discarded (nothing paid); its events come to nothing
        created = conn.execute(
            """INSERT INTO batches (client, batch_id, fingerprint, state, total, created_at,
                                    submitted_by, last_seq)
               VALUES (%s, %s, %s, 'accepting', %s, to_timestamp(%s / 1000.0), %s, 1)
               ON CONFLICT DO NOTHING""",
            (*event.ref, header["fingerprint"], int(header["total"]), event.at_ms,
             header["submitted_by"])).rowcount
        if not created:
            return  # a replay: the items and their events are already there
        with conn.cursor() as cur:
            with cur.copy("""COPY items (client, batch_id, idx, external_id, user_id, amount_cents,
                             pix_key_masked, terms, status, attempts, detail, last_seq, updated_at)
                             FROM STDIN""") as copy:
                for raw_idx, raw in items.items():
                    item = orjson.loads(raw)
                    accepted = {k: item[k] for k in ("external_id", "user_id", "amount_cents",
                                                      "pix_key", "pix_key_type") if k in item}
                    accepted.update(status="pending", attempts=0)
                    terms = orjson.loads(orders[raw_idx])["terms"]
                    copy.write_row((*event.ref, int(raw_idx), item["external_id"], item["user_id"],
                                    item["amount_cents"], item["pix_key"], terms, "pending", 0,
                                    orjson.dumps(accepted).decode(), 1, _ts(event.at_ms)))
            with cur.copy("COPY events (client, batch_id, seq, idx, type, at, detail) FROM STDIN") as copy:
                copy.write_row((*event.ref, 1, -1, "batch.accepted", _ts(event.at_ms),
                                orjson.dumps(event.detail).decode()))
                for raw_idx in items:
                    copy.write_row((*event.ref, 1, int(raw_idx), "accepted", _ts(event.at_ms), "{}"))

    def _batch_event(self, conn: psycopg.Connection, event: Event) -> None:
        inserted = conn.execute(
            """INSERT INTO events (client, batch_id, seq, idx, type, at, attempt, code, detail)
               SELECT %s, %s, %s, -1, %s, to_timestamp(%s / 1000.0), %s, %s, %s
               WHERE EXISTS (SELECT 1 FROM batches WHERE client = %s AND batch_id = %s)
               ON CONFLICT DO NOTHING""",
            (*event.ref, event.seq, event.type, event.at_ms, event.attempt, event.code,
             orjson.dumps(event.detail).decode(), *event.ref)).rowcount
        if not inserted:
            return
        d = event.detail
        if event.type == "batch.published":
            conn.execute("""UPDATE batches SET state = 'processing' WHERE client = %s
                            AND batch_id = %s AND state = 'accepting'""", event.ref)
        elif event.type == "batch.completed":
            conn.execute(
                """UPDATE batches SET state = 'completed', processed = %s, successful = %s,
                   failed = %s, duplicates = %s, completed_at = %s::timestamptz
                   WHERE client = %s AND batch_id = %s""",
                (d["processed"], d["successful"], d["failed"], d["duplicates"], d["completed_at"],
                 *event.ref))
        conn.execute("""UPDATE batches SET last_seq = GREATEST(last_seq, %s)
                        WHERE client = %s AND batch_id = %s""", (event.seq, *event.ref))

    def _item_events(self, conn: psycopg.Connection, events: Iterable[Event]) -> None:
        """All item events of the pass through two staging tables: one COPY, three statements."""
        conn.execute("""CREATE TEMP TABLE IF NOT EXISTS staged_events
                        (LIKE events INCLUDING DEFAULTS, item jsonb) ON COMMIT DELETE ROWS""")
        with conn.cursor() as cur, cur.copy(
                """COPY staged_events (client, batch_id, seq, idx, type, at, attempt, code,
                   detail, item) FROM STDIN""") as copy:
            for e in events:
                detail = dict(e.detail)
                if e.item is not None and e.type in ("paid", "failed", "duplicate"):
                    detail.update({k: e.item[k] for k in FINAL_DETAIL if e.item.get(k) is not None})
                copy.write_row((*e.ref, e.seq, e.idx, e.type, _ts(e.at_ms), e.attempt, e.code,
                                orjson.dumps(detail).decode(),
                                None if e.item is None else orjson.dumps(e.item).decode()))
        conn.execute(
            """INSERT INTO events (client, batch_id, seq, idx, type, at, attempt, code, detail)
               SELECT s.client, s.batch_id, s.seq, s.idx, s.type, s.at, s.attempt, s.code, s.detail
               FROM staged_events s
               JOIN items i USING (client, batch_id, idx)
               ORDER BY s.seq
               ON CONFLICT DO NOTHING""")
        conn.execute(
            """UPDATE items i SET status = l.item->>'status',
                   attempts = COALESCE((l.item->>'attempts')::int, i.attempts),
                   e2e_id = l.item->>'e2e_id', failure_code = l.item->>'failure_code',
                   claim_generation = COALESCE((l.detail->>'claim_generation')::int,
                                               i.claim_generation),
                   detail = l.item, last_seq = l.seq, updated_at = l.at
               FROM (SELECT DISTINCT ON (client, batch_id, idx) *
                     FROM staged_events WHERE item IS NOT NULL
                     ORDER BY client, batch_id, idx, seq DESC) l
               WHERE i.client = l.client AND i.batch_id = l.batch_id AND i.idx = l.idx
                 AND i.last_seq < l.seq""")
        conn.execute(
            """UPDATE batches b SET last_seq = GREATEST(b.last_seq, m.seq)
               FROM (SELECT client, batch_id, max(seq) AS seq FROM staged_events
                     GROUP BY client, batch_id) m
               WHERE b.client = m.client AND b.batch_id = m.batch_id""")


def _ts(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}+00:00"
