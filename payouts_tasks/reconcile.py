"""Reconciliation: compare batch reports with the provider's ledger.

A discrepancy is anything that would mean money paid twice, paid without a record, or a
report that does not add up. `payouts reconcile` prints them and exits non-zero.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass

from payouts_tasks.provider import PixProvider
from payouts_tasks.store import PayoutStore


@dataclass(frozen=True)
class Discrepancy:
    kind: str  # double_transfer | paid_without_transfer | transfer_without_paid_item |
    #            duplicate_without_payment | counters_mismatch
    batch_id: str | None
    external_id: str | None
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


def reconcile(store: PayoutStore, provider: PixProvider,
              batch_id: str | None = None) -> list[Discrepancy]:
    """Every discrepancy for one batch (its items' external_ids), or for everything."""
    reports = {b: store.report(b) for b in store.all_batch_ids()}
    reports = {b: r for b, r in reports.items() if r is not None}
    if batch_id is not None and batch_id not in reports:
        raise KeyError(batch_id)

    settled = [t for t in provider.transfers() if t.status == "settled"]
    settled_by_e2e = {t.e2e_id: t for t in settled}
    paid_e2e = {d["e2e_id"] for r in reports.values() for d in r["details"] if d["status"] == "paid"}
    scope = reports if batch_id is None else {batch_id: reports[batch_id]}
    in_scope = {d["external_id"] for r in scope.values() for d in r["details"]}

    found: list[Discrepancy] = []
    for bid, report in scope.items():
        found += _check_report(bid, report, settled_by_e2e)

    per_external_id: dict[str, list[str]] = defaultdict(list)
    for transfer in settled:
        if transfer.external_id in in_scope:
            per_external_id[transfer.external_id].append(transfer.e2e_id)
            if transfer.e2e_id not in paid_e2e:
                found.append(Discrepancy("transfer_without_paid_item", None, transfer.external_id,
                                         f"transfer {transfer.e2e_id} belongs to no paid item"))
    for external_id, e2e_ids in per_external_id.items():
        if len(e2e_ids) > 1:
            found.append(Discrepancy("double_transfer", None, external_id,
                                     f"{len(e2e_ids)} settled transfers: {', '.join(e2e_ids)}"))
    return found


def _check_report(batch_id: str, report: dict, settled_by_e2e: dict) -> list[Discrepancy]:
    found = []
    statuses = Counter(d["status"] for d in report["details"])
    expected = {"successful": statuses["paid"], "failed": statuses["failed"],
                "duplicates": statuses["duplicate"],
                "processed": statuses["paid"] + statuses["failed"] + statuses["duplicate"]}
    actual = {k: report[k] for k in expected}
    if actual != expected or report["total"] != len(report["details"]):
        found.append(Discrepancy("counters_mismatch", batch_id, None,
                                 f"counters {actual} but items say {expected}"))
    for detail in report["details"]:
        external_id = detail["external_id"]
        if detail["status"] == "paid":
            transfer = settled_by_e2e.get(detail.get("e2e_id"))
            if transfer is None or transfer.external_id != external_id \
                    or transfer.amount_cents != detail["amount_cents"]:
                found.append(Discrepancy("paid_without_transfer", batch_id, external_id,
                                         f"no settled transfer {detail.get('e2e_id')} for this item"))
        elif detail["status"] == "duplicate":
            origin = (detail.get("duplicate_of") or {}).get("e2e_id")
            transfer = settled_by_e2e.get(origin)
            if transfer is None or transfer.external_id != external_id:
                found.append(Discrepancy("duplicate_without_payment", batch_id, external_id,
                                         f"duplicate_of names no settled transfer ({origin})"))
    return found
