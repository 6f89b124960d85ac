"""Reconciliation: compare batch reports with the provider's ledger, per client or for all.

A discrepancy is anything that would mean money paid twice, paid without a record, paid for
another client, a duplicate that is not the same payout, or a report that does not add up.
`payouts reconcile` prints them and exits non-zero.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass

from payouts_core.provider import PixProvider, Transfer
from payouts_core.rules import counters_from_statuses, parse_idempotency_key
from payouts_core.store import BatchRef, PayoutStore


@dataclass(frozen=True)
class Discrepancy:
    kind: str  # double_transfer | paid_without_transfer | transfer_without_paid_item |
    #            duplicate_without_payment | duplicate_terms_differ | transfer_without_client |
    #            transfer_shared_by_clients | counters_mismatch | unreadable_batch
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
              client: str | None = None) -> list[Discrepancy]:
    """Every discrepancy for one client's batches (or everyone's), or for one batch id.

    Raises KeyError for a batch id no batch in scope has. An unreadable batch is reported,
    never a reason to stop checking the others.
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
    if batch_id is not None and not scope:
        raise KeyError(batch_id)

    settled = [t for t in provider.transfers() if t.status == "settled"]
    owners = _transfer_owners(settled, found if client is None and batch_id is None else [])
    settled_by_e2e = {t.e2e_id: t for t in settled}
    paid_by = defaultdict(set)  # e2e_id -> clients with a paid item naming it
    for b in batches.values():
        for d in b.report["details"]:
            if d["status"] == "paid":
                paid_by[d.get("e2e_id")].add(b.ref.client)

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
        if owner[0] not in clients:
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
