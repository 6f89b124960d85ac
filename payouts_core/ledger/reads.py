"""Reads from the ledger (SPEC §10): what Redis no longer holds, answered with the same JSON.

Redis keeps a batch for the retention window; after that the batch report, the history, the
items-by-status pages and the CSV come from PostgreSQL. The item story and the daily reports
always do (only the ledger keeps events and sums across batches). Every query names the client:
another client's batch reads like an unknown one (SPEC §9).

One small connection pool per process, created on first use (a gunicorn worker forked after
import opens its own); a database that does not answer raises LedgerUnavailable (503), never a
404 that would claim a batch does not exist.
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from payouts_core.rules import encode_id
from payouts_core.store import BatchRef, PayoutStore, batch_keys
from payouts_core.text import utcnow

# Connections per process: reads are short, and the API's threads per process are few.
POOL_MAX = 4
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The history's order within one millisecond is by the encoded batch_id's bytes, as Redis sorts
# its index. Batch ids hold only [A-Za-z0-9._:-] (schemas.ID_PATTERN), of which encode_id
# changes only ':'; tests/core/test_ledger_reads.py checks this expression against encode_id.
# (`%%`: it goes into queries with parameters.)
MEMBER_SQL = "replace(batch_id, ':', '%%3A') COLLATE \"C\""

# One row per item: the report entry's fields (masked PIX key only), as (header, JSON path).
CSV_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("index", ()),
    ("external_id", ("external_id",)),
    ("user_id", ("user_id",)),
    ("amount_cents", ("amount_cents",)),
    ("pix_key", ("pix_key",)),
    ("pix_key_type", ("pix_key_type",)),
    ("status", ("status",)),
    ("attempts", ("attempts",)),
    ("e2e_id", ("e2e_id",)),
    ("failure_code", ("failure_code",)),
    ("failure_reason", ("failure_reason",)),
    ("duplicate_of_batch_id", ("duplicate_of", "batch_id")),
    ("duplicate_of_index", ("duplicate_of", "index")),
    ("duplicate_of_e2e_id", ("duplicate_of", "e2e_id")),
)


class LedgerUnavailable(RuntimeError):
    """PostgreSQL did not answer (down, or every pooled connection busy past the timeout)."""


def _ms(at: datetime) -> int:
    return (at - EPOCH) // timedelta(milliseconds=1)


def _at(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def _iso(at: datetime | None) -> str | None:
    """The store's time format (`2026-12-04T10:00:00.123Z`), so both sources print alike."""
    return None if at is None else utcnow(at.astimezone(UTC))


def _head(row: dict) -> dict:
    """The report's head fields (SPEC §4) from a `batches` row, as `store._report_head` makes them."""
    head = {
        "batch_id": row["batch_id"],
        "status": "completed" if row["state"] == "completed" else "processing",
        "total": row["total"],
        "processed": row["processed"],
        "successful": row["successful"],
        "failed": row["failed"],
        "duplicates": row["duplicates"],
        "created_at": _iso(row["created_at"]),
        "completed_at": _iso(row["completed_at"]),
    }
    if row["submitted_by"]:
        head["submitted_by"] = row["submitted_by"]
    return head


def history_position(summary: dict) -> tuple[int, str]:
    """(creation ms, encoded batch_id): where a batch sits in the history, in both stores."""
    created = datetime.strptime(summary["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return _ms(created), encode_id(summary["batch_id"])


def _csv_sql_value(path: tuple[str, ...]) -> str:
    # NULLIF: an empty string prints unquoted, as Python's csv prints it.
    if not path:
        return "idx"
    *parents, leaf = path
    return "NULLIF(detail" + "".join(f"->'{p}'" for p in parents) + f"->>'{leaf}', '')"


def csv_row(index: int, entry: dict) -> list:
    """One CSV row from a report entry (the Redis side; the ledger's COPY selects the same)."""
    row = []
    for _, path in CSV_COLUMNS:
        value: object = entry
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        row.append(index if not path else ("" if value is None else value))
    return row


def csv_text(rows: list[list], header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(name for name, _ in CSV_COLUMNS)
    writer.writerows(rows)
    return out.getvalue()


class LedgerReads:
    """Queries on the ledger for one database URL, through a per-process connection pool."""

    def __init__(self, database_url: str, timeout_s: float = 5.0):
        self.database_url = database_url
        self.timeout_s = timeout_s
        self._pool: ConnectionPool | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _get_pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = ConnectionPool(
                    self.database_url, min_size=0, max_size=POOL_MAX, open=True,
                    name="ledger-reads", timeout=self.timeout_s,
                    kwargs={"autocommit": True, "connect_timeout": max(1, int(self.timeout_s))},
                    # A connection that died with a PostgreSQL restart is replaced, not handed out.
                    check=ConnectionPool.check_connection)
                self._pid = os.getpid()
            return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.close()
            self._pool = None

    @contextmanager
    def pooled(self) -> Iterator[psycopg.Connection]:
        """A connection of the process's pool, raising psycopg's own errors (a pool wait past the
        timeout is PoolTimeout, an OperationalError): for callers that handle them themselves."""
        with self._get_pool().connection() as conn:
            yield conn

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        try:
            with self.pooled() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise LedgerUnavailable(f"the ledger database is not answering ({type(exc).__name__})") \
                from exc

    def _rows(self, sql: str, params: dict | tuple) -> list[dict]:
        with self.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(sql, params).fetchall()

    # -- one batch -----------------------------------------------------------------------

    def report_json(self, ref: BatchRef) -> str | None:
        """The batch report (SPEC §4) as `PayoutStore.report_json` writes it, or None.

        One statement, so the head and the details are one snapshot; each item's `detail` is
        its report entry, joined as text in submission order, not decoded and encoded again.
        """
        rows = self._rows(
            """SELECT b.*, (SELECT string_agg(i.detail::text, ',' ORDER BY i.idx) FROM items i
                            WHERE i.client = b.client AND i.batch_id = b.batch_id) AS details
               FROM batches b WHERE b.client = %s AND b.batch_id = %s""", ref)
        if not rows:
            return None
        head = json.dumps(_head(rows[0]), separators=(",", ":"))
        return head[:-1] + ',"details":[' + (rows[0]["details"] or "") + "]}"

    def exists(self, ref: BatchRef) -> bool:
        return bool(self._rows("SELECT 1 FROM batches WHERE client = %s AND batch_id = %s", ref))

    def batch_items(self, ref: BatchRef, limit: int, start: int = 0, status: str | None = None
                    ) -> tuple[list[dict], int | None] | None:
        """As `PayoutStore.batch_items`: items from index `start` on (in `status` when given),
        with their `index`, and the index to continue from; None for an unknown batch."""
        rows = self._rows(
            """SELECT b.total, i.idx, i.detail FROM batches b
               LEFT JOIN LATERAL (
                   SELECT idx, detail FROM items WHERE client = b.client AND batch_id = b.batch_id
                   AND idx >= %(start)s AND (%(status)s::text IS NULL OR status = %(status)s)
                   ORDER BY idx LIMIT %(limit)s) i ON true
               WHERE b.client = %(client)s AND b.batch_id = %(batch_id)s""",
            {"client": ref.client, "batch_id": ref.batch_id, "start": start, "status": status,
             "limit": limit})
        if not rows:
            return None
        found = [{"index": r["idx"], **r["detail"]} for r in rows if r["idx"] is not None]
        total = rows[0]["total"]
        if len(found) == limit and found[-1]["index"] + 1 < total:
            return found, found[-1]["index"] + 1
        return found, None

    def items_of(self, ref: BatchRef, external_id: str) -> list[dict]:
        """The batch's items with this external_id (index and report entry), in order."""
        return [{"index": r["idx"], **r["detail"]} for r in self._rows(
            """SELECT idx, detail FROM items WHERE client = %s AND batch_id = %s
               AND external_id = %s ORDER BY idx""", (*ref, external_id))]

    def events_of(self, ref: BatchRef, indexes: list[int]) -> dict[int, list[dict]]:
        """Each item's events in its batch's sequence: time, type, attempt, code, detail."""
        events: dict[int, list[dict]] = {i: [] for i in indexes}
        for r in self._rows(
                """SELECT idx, seq, at, type, attempt, code, detail FROM events
                   WHERE client = %s AND batch_id = %s AND idx = ANY(%s) ORDER BY idx, seq""",
                (*ref, indexes)):
            events[r["idx"]].append({"seq": r["seq"], "at": _iso(r["at"]), "type": r["type"],
                                     "attempt": r["attempt"], "code": r["code"],
                                     "detail": r["detail"]})
        return events

    def csv_chunks(self, ref: BatchRef, start: int = 0, header: bool = True) -> Iterator[bytes]:
        """The batch's items from `start` on as CSV, streamed by COPY TO STDOUT while the
        caller reads (a pooled connection is held until the iterator ends or is closed)."""
        columns = ", ".join(f'{_csv_sql_value(path)} AS "{name}"' for name, path in CSV_COLUMNS)
        query = sql.SQL(
            "COPY (SELECT " + columns + " FROM items WHERE client = {} AND batch_id = {} "
            "AND idx >= {} ORDER BY idx) TO STDOUT WITH (FORMAT csv" +
            (", HEADER" if header else "") + ")").format(ref.client, ref.batch_id, start)
        with self.connection() as conn, conn.cursor() as cur, cur.copy(query) as copy:
            for chunk in copy:
                yield bytes(chunk)

    # -- history ---------------------------------------------------------------------------

    def history(self, client: str, limit: int, after: tuple[int, str] | None = None,
                status: str | None = None, newest_ms: int | None = None,
                oldest_ms: int | None = None) -> list[tuple[tuple[int, str], dict]]:
        """Up to `limit` (position, summary) of the client's archived batches, newest first,
        strictly after `after`, in the order and with the bounds of `PayoutStore.history`."""
        rows = self._rows(
            f"""SELECT *, {MEMBER_SQL} AS member FROM batches
                WHERE client = %(client)s
                AND (%(status)s::text IS NULL OR (state = 'completed') = (%(status)s = 'completed'))
                AND (%(newest)s::timestamptz IS NULL OR created_at <= %(newest)s)
                AND (%(oldest)s::timestamptz IS NULL OR created_at >= %(oldest)s)
                AND (%(after_at)s::timestamptz IS NULL OR created_at < %(after_at)s
                     OR (created_at = %(after_at)s AND {MEMBER_SQL} < %(after_member)s))
                ORDER BY created_at DESC, member DESC LIMIT %(limit)s""",
            {"client": client, "status": status, "limit": limit,
             "newest": None if newest_ms is None else _at(newest_ms),
             "oldest": None if oldest_ms is None else _at(oldest_ms),
             "after_at": None if after is None else _at(after[0]),
             "after_member": None if after is None else after[1]})
        return [((_ms(r["created_at"]), r["member"]), _head(r)) for r in rows]

    # -- reports ---------------------------------------------------------------------------

    def daily(self, client: str, first: date, last: date) -> list[dict]:
        """Per UTC day from `first` to `last`: items that reached a final state that day,
        counted and summed: paid, failed (by code) and duplicates."""
        days = {first + timedelta(days=n): _empty_day(first + timedelta(days=n))
                for n in range((last - first).days + 1)}
        start = datetime(first.year, first.month, first.day, tzinfo=UTC)
        for r in self._rows(
                """SELECT (updated_at AT TIME ZONE 'UTC')::date AS day, status, failure_code,
                          count(*) AS n, sum(amount_cents) AS cents
                   FROM items WHERE client = %s AND status IN ('paid', 'failed', 'duplicate')
                   AND updated_at >= %s AND updated_at < %s
                   GROUP BY 1, 2, 3""",
                (client, start, start + timedelta(days=len(days)))):
            day = days[r["day"]]
            bucket = day[{"paid": "paid", "failed": "failed", "duplicate": "duplicates"}[r["status"]]]
            bucket["count"] += r["n"]
            bucket["amount_cents"] += int(r["cents"])
            if r["status"] == "failed":
                by_code = bucket["by_code"].setdefault(r["failure_code"] or "UNKNOWN",
                                                       {"count": 0, "amount_cents": 0})
                by_code["count"] += r["n"]
                by_code["amount_cents"] += int(r["cents"])
        return list(days.values())


@lru_cache(maxsize=8)
def shared(database_url: str) -> LedgerReads:
    """The process's reader of this database: every app built in the process shares its pool
    (tests build hundreds of apps; one pool each would hold PostgreSQL connections by hundreds)."""
    return LedgerReads(database_url)


def _empty_day(day: date) -> dict:
    return {"date": day.isoformat(), "paid": {"count": 0, "amount_cents": 0},
            "failed": {"count": 0, "amount_cents": 0, "by_code": {}},
            "duplicates": {"count": 0, "amount_cents": 0}}


# -- both stores together -----------------------------------------------------------------

def merged_history(store: PayoutStore, ledger: LedgerReads, client: str, limit: int,
                   after: tuple[int, str] | None = None, status: str | None = None,
                   newest_ms: int | None = None, oldest_ms: int | None = None
                   ) -> tuple[list[dict], tuple[int, str] | None]:
    """One history page over the batches Redis holds and those only the ledger holds, newest
    first, each once, and the position to go on from (None at the end).

    A batch Redis still holds is listed (or filtered out) from Redis alone: the ledger may be
    behind it. Each source is read down to a stop (Redis examines a bounded number of batches
    per page; the ledger gives limit + 1 rows); entries past the newer stop wait for the next
    page, which starts there, so nothing is skipped or repeated.
    """
    live, live_stop = store.history(client, limit, after, status, newest_ms, oldest_ms)
    fetched = ledger.history(client, limit + 1, after, status, newest_ms, oldest_ms)
    # Each source is read down to its stop (None: to its end); this page covers the newer one.
    stops = [p for p in (live_stop, fetched[-1][0] if len(fetched) > limit else None)
             if p is not None]
    bound = max(stops) if stops else None
    with store.client.pipeline(transaction=False) as pipe:
        for _, summary in fetched:
            pipe.exists(batch_keys(BatchRef(client, summary["batch_id"]))[0])
        held = pipe.execute() if fetched else []
    entries = {summary["batch_id"]: (position, summary)
               for (position, summary), in_redis in zip(fetched, held, strict=True)
               if not in_redis and (bound is None or position >= bound)}
    # Redis's copy wins: a batch deleted from Redis after its listing was read is in both.
    for summary in live:
        position = history_position(summary)
        if bound is None or position >= bound:
            entries[summary["batch_id"]] = (position, summary)
    ordered = sorted(entries.values(), key=lambda entry: entry[0], reverse=True)
    if len(ordered) > limit:
        return [summary for _, summary in ordered[:limit]], ordered[limit - 1][0]
    return [summary for _, summary in ordered], bound


def report_json(store: PayoutStore, ledger: LedgerReads, ref: BatchRef) -> str | None:
    """The batch report from Redis while it holds the batch, else from the ledger."""
    report = store.report_json(ref)
    return report if report is not None else ledger.report_json(ref)


def batch_items(store: PayoutStore, ledger: LedgerReads, ref: BatchRef, limit: int,
                start: int = 0, status: str | None = None, max_scan: int | None = None
                ) -> tuple[list[dict], int | None] | None:
    """`max_scan` bounds the items Redis decodes per page (the ledger's query is indexed)."""
    found = store.batch_items(ref, limit, start, status, max_scan=max_scan)
    return found if found is not None else ledger.batch_items(ref, limit, start, status)


def item_story(store: PayoutStore, ledger: LedgerReads, ref: BatchRef, external_id: str
               ) -> list[dict] | None:
    """The batch's items with this external_id, each with its `events` from the ledger (a
    batch still in Redis: its entry from Redis, its events up to the archive lag); None for
    an unknown batch."""
    archived = ledger.items_of(ref, external_id)
    items = []
    if store.batch_exists(ref):
        if archived or ledger.exists(ref):  # the ledger has every item from the batch's accept on
            indexes = [item["index"] for item in archived]
        else:
            indexes = [item["index"] for item in _redis_items(store, ref)
                       if item["external_id"] == external_id]
        for index in indexes:
            found = store.batch_items(ref, 1, index)
            items.extend(found[0] if found else [a for a in archived if a["index"] == index])
    elif archived or ledger.exists(ref):
        items = archived
    else:
        return None
    events = ledger.events_of(ref, [item["index"] for item in items])
    return [{**item, "events": events[item["index"]]} for item in items]


def _redis_items(store: PayoutStore, ref: BatchRef, chunk: int = 1000) -> Iterator[dict]:
    start: int | None = 0
    while start is not None:
        found = store.batch_items(ref, chunk, start)
        if found is None:
            return
        yield from found[0]
        start = found[1]


def csv_stream(store: PayoutStore, ledger: LedgerReads, ref: BatchRef,
               chunk: int = 1000) -> Iterator[bytes] | None:
    """The batch as CSV (one row per item, masked keys only), streamed: from Redis while it
    holds the batch (continuing from the ledger if retention deletes it meanwhile), else by
    the ledger's COPY; None for an unknown batch. Both print the same bytes."""
    first = store.batch_items(ref, chunk, 0)
    if first is None:
        return ledger.csv_chunks(ref) if ledger.exists(ref) else None

    def from_redis(found: tuple[list[dict], int | None] | None) -> Iterator[bytes]:
        header, start = True, 0
        while found is not None:
            yield csv_text([csv_row(item["index"], item) for item in found[0]], header).encode()
            header, start = False, found[1]
            if start is None:
                return
            found = store.batch_items(ref, chunk, start)
        yield from ledger.csv_chunks(ref, start, header)

    return from_redis(first)
