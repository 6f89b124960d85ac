"""Reconciliation, three ways: Redis's batch reports, the provider's transfers and the durable
ledger (PostgreSQL), per client or for all.

A discrepancy is anything that would mean money paid twice, paid without a record, paid for
another client, a duplicate that is not the same payout, a report that does not add up, or a
ledger that lacks, or disagrees with, what Redis holds (LedgerSide below).
`payouts reconcile` prints them and exits non-zero.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import orjson
import psycopg

from payouts_core.provider import PixProvider, Transfer
from payouts_core.rules import FINAL_STATUSES, counters_from_statuses, parse_idempotency_key
from payouts_core.store import OUTBOX, BatchRef, PayoutStore, batch_keys


@dataclass(frozen=True)
class Discrepancy:
    kind: str  # double_transfer | paid_without_transfer | transfer_without_paid_item |
    #            duplicate_without_payment | duplicate_terms_differ | transfer_without_client |
    #            transfer_shared_by_clients | counters_mismatch | unreadable_batch
    #            and the ledger's: ledger_missing_batch | ledger_missing_item | ledger_extra_item |
    #            ledger_differs | ledger_events_mismatch | ledger_behind | ledger_paid_without_transfer
    client: str | None
    batch_id: str | None
    external_id: str | None
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Batch:
    ref: BatchRef
    report: dict
    terms: dict[int, str]


def reconcile(store: PayoutStore, provider: PixProvider, batch_id: str | None = None,
              client: str | None = None, ledger: LedgerCheck | None = None) -> list[Discrepancy]:
    """Every discrepancy for one client's batches (or everyone's), or for one batch id; with
    `ledger`, the ledger's batches, items and events too.

    Safe while batches settle: Redis is read before the provider, so a transfer made for an item
    that was not final yet is in motion, not a discrepancy (a later run sees the item paid, or
    reports it once the item is final without naming it). A second transfer is always reported.

    Raises KeyError for a batch id no batch in scope has (in Redis, or in the ledger when it is
    checked). An unreadable batch is reported, never a reason to stop checking the others.
    """
    found: list[Discrepancy] = []
    batches: dict[BatchRef, _Batch] = {}
    for ref in store.all_batches(client):
        try:
            report = store.report(ref)
            if report is not None:
                batches[ref] = _Batch(ref, report, store.item_terms(ref))
        except Exception as exc:  # corrupt data: report it and check the rest
            if batch_id is None or ref.batch_id == batch_id:
                    found.append(Discrepancy("unreadable_batch", ref.client, ref.batch_id, None,
                                         f"{type(exc).__name__}: {str(exc)[:200]}"))
    scope = [b for b in batches.values() if batch_id is None or b.ref.batch_id == batch_id]
    if ledger is not None:
        ledger_side = LedgerSide(ledger, client, batch_id)
        ledger_side.snapshot(store, [b.ref for b in scope])  # before the provider's slow read
        if batch_id is not None and not scope and not ledger_side.archived_only():
            raise KeyError(batch_id)
    elif batch_id is not None and not scope:
        raise KeyError(batch_id)

    settled = [t for t in provider.transfers() if t.status == "settled"]
    owners = _transfer_owners(settled, found if client is None and batch_id is None else [])
    settled_by_e2e = {t.e2e_id: t for t in settled}
    if ledger is not None:
        found += ledger_side.compare(store, settled_by_e2e, owners)
    paid_by = defaultdict(set)  # e2e_id -> clients with a paid item naming it
    settling = set()  # (client, external_id) of items not final when Redis was read
    for b in batches.values():
        for d in b.report["details"]:
            if d["status"] == "paid":
                paid_by[d.get("e2e_id")].add(b.ref.client)
            elif d["status"] not in FINAL_STATUSES:
                settling.add((b.ref.client, d["external_id"]))

    for b in scope:
        found += _check_batch(b, batches, settled_by_e2e, owners)

    in_scope = {(b.ref.client, d["external_id"]) for b in scope for d in b.report["details"]}
    per_external_id: dict[tuple[str, str], list[str]] = defaultdict(list)
    for transfer in settled:
        owner = owners.get(transfer.e2e_id)
        if owner is None or owner not in in_scope:
            continue
        per_external_id[owner].append(transfer.e2e_id)
        clients = paid_by.get(transfer.e2e_id, set())
        if owner[0] not in clients and owner not in settling:
            found.append(Discrepancy("transfer_without_paid_item", owner[0], None, owner[1],
                                     f"transfer {transfer.e2e_id} belongs to no paid item"))
        if len(clients) > 1:
            found.append(Discrepancy("transfer_shared_by_clients", owner[0], None, owner[1],
                                     f"transfer {transfer.e2e_id} is reported paid by "
                                     f"{', '.join(sorted(clients))}"))
    for (owner_client, external_id), e2e_ids in per_external_id.items():
        if len(e2e_ids) > 1:
            found.append(Discrepancy("double_transfer", owner_client, None, external_id,
                                     f"{len(e2e_ids)} settled transfers: {', '.join(e2e_ids)}"))
    return found


def _transfer_owners(settled: list[Transfer], found: list[Discrepancy]) -> dict[str, tuple[str, str]]:
    """e2e_id -> (client, external_id), read from each transfer's idempotency key.

    A transfer whose key names no client is everyone's concern: reported in a global run only.
    """
    owners = {}
    for transfer in settled:
        parsed = parse_idempotency_key(transfer.idempotency_key)
        if parsed is None or parsed[1] != transfer.external_id:
            found.append(Discrepancy("transfer_without_client", None, None, transfer.external_id,
                                     f"transfer {transfer.e2e_id} has no client in its key"))
            continue
        owners[transfer.e2e_id] = (parsed[0], parsed[1])
    return owners


def _check_batch(batch: _Batch, batches: dict[BatchRef, _Batch], settled_by_e2e: dict,
                 owners: dict[str, tuple[str, str]]) -> list[Discrepancy]:
    ref, report = batch.ref, batch.report
    found = []
    expected = counters_from_statuses(d["status"] for d in report["details"])
    actual = {k: report[k] for k in expected}
    if actual != expected or report["total"] != len(report["details"]):
        found.append(Discrepancy("counters_mismatch", ref.client, ref.batch_id, None,
                                 f"counters {actual} but items say {expected}"))
    for index, detail in enumerate(report["details"]):
        external_id = detail["external_id"]
        mine = (ref.client, external_id)
        if detail["status"] == "paid":
            transfer = settled_by_e2e.get(detail.get("e2e_id"))
            if transfer is None or owners.get(transfer.e2e_id) != mine \
                    or transfer.amount_cents != detail["amount_cents"]:
                found.append(Discrepancy("paid_without_transfer", ref.client, ref.batch_id,
                                         external_id,
                                         f"no settled transfer {detail.get('e2e_id')} for this item"))
        elif detail["status"] == "duplicate":
            origin = detail.get("duplicate_of") or {}
            transfer = settled_by_e2e.get(origin.get("e2e_id"))
            if transfer is None or owners.get(transfer.e2e_id) != mine:
                found.append(Discrepancy("duplicate_without_payment", ref.client, ref.batch_id,
                                         external_id,
                                         f"duplicate_of names no settled transfer ({origin.get('e2e_id')})"))
            original = batches.get(BatchRef(ref.client, str(origin.get("batch_id"))))
            if original is None or original.terms.get(origin.get("index")) != batch.terms.get(index):
                found.append(Discrepancy("duplicate_terms_differ", ref.client, ref.batch_id,
                                         external_id,
                                         "the paid original has other terms (amount, PIX key or "
                                         "user_id), or cannot be found"))
    return found


# --- the ledger (issue 18) -------------------------------------------------------------------------

@dataclass(frozen=True)
class LedgerCheck:
    """Where the ledger is, and how long to wait for the archiver to take what Redis holds."""

    database_url: str
    archive_wait_s: float = 30.0


@dataclass
class _Snapshot:
    events: int  # the batch's event sequence so far (its hash's `events`)
    header: dict[str, str]
    items: dict[int, dict] = field(default_factory=dict)


class LedgerSide:
    """The ledger's half of a reconciliation.

    Archive lag is never reported as a difference (drain-aware): Redis is read first, each batch
    in one MULTI with its event count; then the outbox's newest entry id becomes a horizon, and
    the archiver is waited for (at most archive_wait_s) until it has committed every entry up to
    it. Every event Redis counted is then in the ledger, or the archive is stuck: its batches are
    reported `ledger_behind`, never as missing rows. A batch whose event count moved while the
    ledger was read is left for the next run (it is settling, the ledger just took part of it).
    """

    def __init__(self, check: LedgerCheck, client: str | None, batch_id: str | None):
        self.check, self.client, self.batch_id = check, client, batch_id
        self.snapshots: dict[BatchRef, _Snapshot] = {}
        self.in_redis: set[BatchRef] = set()
        self.drained = True
        self.backlog = 0

    def snapshot(self, store: PayoutStore, refs: list[BatchRef]) -> None:
        self.in_redis = set(store.all_batches(self.client))
        for ref in refs:
            batch_key, items_key = batch_keys(ref)[:2]
            with store.client.pipeline(transaction=True) as pipe:
                pipe.hgetall(batch_key)
                pipe.hgetall(items_key)
                header, items = pipe.execute()
            if header:
                header = {_text(k): _text(v) for k, v in header.items()}
                self.snapshots[ref] = _Snapshot(int(header.get("events") or 0), header,
                                                {int(k): orjson.loads(v) for k, v in items.items()})
        self.drained = self._wait_for_archive(store)

    def _wait_for_archive(self, store: PayoutStore) -> bool:
        newest = store.client.xrevrange(OUTBOX, count=1)
        if not newest:
            return True
        horizon = _stream_id(newest[0][0])
        deadline = time.monotonic() + self.check.archive_wait_s
        while True:
            first = store.client.xrange(OUTBOX, count=1)
            if not first or _stream_id(first[0][0]) > horizon:
                return True
            if time.monotonic() >= deadline:
                self.backlog = store.client.xlen(OUTBOX)
                return False
            time.sleep(0.1)

    def archived_only(self) -> bool:
        """The asked-for batch exists in the ledger (its Redis keys may be gone after retention)."""
        with self._connect() as conn:
            return bool(conn.execute(
                "SELECT 1 FROM batches WHERE batch_id = %s AND (%s::text IS NULL OR client = %s)",
                (self.batch_id, self.client, self.client)).fetchone())

    def compare(self, store: PayoutStore, settled_by_e2e: dict[str, Transfer],
                owners: dict[str, tuple[str, str]]) -> list[Discrepancy]:
        per_batch: dict[BatchRef, list[Discrepancy]] = {}
        with self._connect() as conn:
            for ref, snap in self.snapshots.items():
                per_batch[ref] = self._compare_batch(conn, ref, snap)
            found = self._archived_batches(conn, settled_by_e2e, owners)
        with store.client.pipeline(transaction=False) as pipe:
            for ref in per_batch:
                pipe.hget(batch_keys(ref)[0], "events")
            now = pipe.execute()
        for (ref, findings), events in zip(per_batch.items(), now, strict=True):
            if int(events or 0) == self.snapshots[ref].events:  # else: in motion, next run
                found += findings
        return found

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self.check.database_url, connect_timeout=5)

    def _compare_batch(self, conn, ref: BatchRef, snap: _Snapshot) -> list[Discrepancy]:
        def found(kind: str, detail: str, external_id: str | None = None) -> Discrepancy:
            return Discrepancy(kind, ref.client, ref.batch_id, external_id, detail)

        row = conn.execute("""SELECT state, processed, successful, failed, duplicates, last_seq
                              FROM batches WHERE client = %s AND batch_id = %s""", ref).fetchone()
        if not self.drained and (row is None or row[5] < snap.events):
            return [found("ledger_behind", f"{snap.events - (row[5] if row else 0)} of its events "
                          f"not archived after {self.check.archive_wait_s:g} s ({self.backlog} "
                          "waiting in the outbox): is the archiver running, PostgreSQL reachable?")]
        if row is None:
            return [found("ledger_missing_batch", "the ledger has no such batch")]
        out = []
        total = int(snap.header["total"])
        events = conn.execute("SELECT count(*) FROM events WHERE client = %s AND batch_id = %s",
                              ref).fetchone()[0]
        if events != snap.events + total:  # + each item's own `accepted`
            out.append(found("ledger_events_mismatch", f"the ledger holds {events} events, Redis "
                             f"counted {snap.events} and {total} items accepted"))
        if snap.header.get("state") == "completed":
            counters = ("processed", "successful", "failed", "duplicates")
            redis_side = tuple(int(snap.header[c]) for c in counters)
            if row[0] != "completed" or tuple(row[1:5]) != redis_side:
                out.append(found("ledger_differs", f"batch: ledger {row[0]} {tuple(row[1:5])}, "
                                 f"Redis completed {redis_side} ({', '.join(counters)})"))
        rows = {r[0]: r[1:] for r in conn.execute(
            """SELECT idx, status, e2e_id, failure_code, detail FROM items
               WHERE client = %s AND batch_id = %s""", ref)}
        for idx, entry in sorted(snap.items.items()):
            external_id = entry.get("external_id")
            if idx not in rows:
                out.append(found("ledger_missing_item", f"item {idx} is not in the ledger", external_id))
                continue
            status, e2e_id, failure_code, detail = rows.pop(idx)
            differs = [f"{name}: Redis {theirs!r}, ledger {ours!r}" for name, theirs, ours in (
                ("status", entry.get("status"), status), ("e2e_id", entry.get("e2e_id"), e2e_id),
                ("failure_code", entry.get("failure_code"), failure_code)) if theirs != ours]
            if not differs and detail != entry:
                keys = sorted(k for k in set(detail) | set(entry) if detail.get(k) != entry.get(k))
                differs = [f"report entry differs in {', '.join(keys)}"]
            if differs:
                out.append(found("ledger_differs", f"item {idx}: " + "; ".join(differs), external_id))
        for idx in sorted(rows):
            out.append(found("ledger_extra_item", f"item {idx} is in the ledger, not in Redis"))
        return out

    def _archived_batches(self, conn, settled_by_e2e: dict[str, Transfer],
                          owners: dict[str, tuple[str, str]]) -> list[Discrepancy]:
        """Batches only the ledger still holds (Redis let them go): each paid item against the
        provider's transfers, as Redis's reports are checked."""
        out = []
        rows = conn.execute(
            """SELECT client, batch_id, external_id, e2e_id, amount_cents FROM items
               WHERE status = 'paid' AND (%(client)s::text IS NULL OR client = %(client)s)
                 AND (%(batch)s::text IS NULL OR batch_id = %(batch)s)""",
            {"client": self.client, "batch": self.batch_id})
        for client, batch_id, external_id, e2e_id, amount in rows:
            if BatchRef(client, batch_id) in self.in_redis:
                continue
            transfer = settled_by_e2e.get(e2e_id)
            if transfer is None or owners.get(e2e_id) != (client, external_id) \
                    or transfer.amount_cents != amount:
                out.append(Discrepancy("ledger_paid_without_transfer", client, batch_id, external_id,
                                       f"the ledger's paid item names no settled transfer ({e2e_id})"))
        return out


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_id(entry_id) -> tuple[int, int]:
    ms, _, seq = _text(entry_id).partition("-")
    return int(ms), int(seq or 0)
