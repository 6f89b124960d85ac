"""The payouts resource: submit a batch, read its report."""

from __future__ import annotations

import json

from flask import Blueprint, Response, current_app, g, request
from marshmallow.experimental.context import Context

from payouts_api.backpressure import refuse_new_batch_when_backlog_full
from payouts_api.extensions import limiter, read_limit
from payouts_api.ledger import ledger
from payouts_api.metrics import BATCHES_ACCEPTED, ITEMS_ACCEPTED
from payouts_api.problems import MAX_FIELD_ERRORS, Problem
from payouts_api.schemas import BatchIdSchema, BatchRequestSchema, HistoryQuerySchema, ItemsQuerySchema
from payouts_core.ledger import reads
from payouts_core.pix_keys import mask_pix_key
from payouts_core.rules import same_terms
from payouts_core.store import (
    BatchConflict,
    BatchRef,
    ExternalIdReused,
    Order,
    encode_cursor,
    fingerprint,
)
from payouts_core.value_caps import ValueCapExceeded
from payouts_tasks.batches import accept_batch

bp = Blueprint("payouts", __name__)
# Items one items page examines: a status filter matching nothing in a 10,000-item batch decoded
# every item per request. A page may then be short with a `next_cursor`: keep following it.
ITEMS_SCAN_MAX = 1000
_batch_schema = BatchRequestSchema()
_batch_id_schema = BatchIdSchema()


def _write_limit() -> str:
    return current_app.config["SETTINGS"].ratelimit_write


class _AmbiguousJSON(ValueError):
    pass


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    """`{"amount_cents": 1, "amount_cents": 100000}` is ambiguous: refuse it rather than guess."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _AmbiguousJSON("The request body has an object with a duplicated key.")
    return obj


def _refuse_constant(name: str):
    raise _AmbiguousJSON(f"{name} is not a JSON number.")


def parse_json_strictly(data: bytes) -> object:
    """RFC 8259 JSON only: no NaN/Infinity, no duplicated keys; nesting too deep is malformed."""
    try:
        return json.loads(data, object_pairs_hook=_refuse_duplicate_keys, parse_constant=_refuse_constant)
    except _AmbiguousJSON as exc:
        raise Problem(400, "Malformed JSON", str(exc)) from None
    except RecursionError:
        raise Problem(400, "Malformed JSON", "The request body is nested too deeply.") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise Problem(400, "Malformed JSON", "The request body is not valid JSON.") from None


def _json_body() -> dict:
    """The request's JSON object, or the 415/400 problem that explains why there is none."""
    if not request.is_json:
        raise Problem(415, "Unsupported media type", "Send the batch as application/json.")
    body = parse_json_strictly(request.get_data(cache=True))  # 413 above MAX_CONTENT_LENGTH
    if not isinstance(body, dict):
        raise Problem(400, "Malformed request", "The request body must be a JSON object.")
    return body


def _report_response(raw_report: str, status: int, headers: dict | None = None) -> Response:
    return Response(raw_report, status=status, mimetype="application/json", headers=headers)


def _orders(items: list[dict]) -> list[Order]:
    return [Order(index=i, external_id=item["external_id"], user_id=item["user_id"],
                  amount_cents=item["amount_cents"], pix_key=item["pix_key"],
                  pix_key_masked=mask_pix_key(item["pix_key"], item["pix_key_type"]),
                  pix_key_type=item["pix_key_type"])
            for i, item in enumerate(items)]


def _refuse_reused_external_ids(conflicts: list[tuple[int, str]]) -> None:
    """422 naming each item whose external_id another payout with other terms already holds."""
    errors = [{"field": f"items.{index}.external_id",
               "message": f"This external_id is already held by {where} with other terms "
                          "(amount, PIX key or user_id). Use a new external_id for a new payout."}
              for index, where in conflicts[:MAX_FIELD_ERRORS]]
    raise Problem(422, "External id reused",
                  f"{len(conflicts)} item(s) reuse an external_id with other terms; "
                  "nothing was accepted.", errors)


def _refuse_value(exc: ValueCapExceeded) -> None:
    """422 for a batch above the per-batch value cap or its client's daily one; nothing accepted."""
    if exc.scope == "batch":
        message = (f"The items total {exc.requested} cents; a batch may total at most {exc.cap} "
                   "(PAYOUTS_MAX_BATCH_AMOUNT_CENTS). Split it.")
    else:
        message = (f"The items total {exc.requested} cents and {exc.used} were accepted today (UTC); "
                   f"a client may submit at most {exc.cap} a day (PAYOUTS_MAX_DAILY_AMOUNT_CENTS).")
    raise Problem(422, "Value cap exceeded", "The batch is above a value cap; nothing was accepted.",
                  [{"field": "items", "message": message}])


def _reused_within_batch(orders: list[Order]) -> list[tuple[int, str]]:
    first: dict[str, Order] = {}
    conflicts = []
    for order in orders:
        earlier = first.setdefault(order.external_id, order)
        if not same_terms(earlier.terms, order.terms):
            conflicts.append((order.index, f"item {earlier.index} of this batch"))
    return conflicts


@bp.post("/api/payouts")
@bp.post("/payouts/batch")
@limiter.limit(_write_limit)
def submit_batch():
    settings = current_app.config["SETTINGS"]
    limits = {"max_items": settings.max_items, "max_amount_cents": settings.max_amount_cents}
    with Context(limits):
        batch = _batch_schema.load(_json_body())
    orders = _orders(batch["items"])
    if conflicts := _reused_within_batch(orders):
        _refuse_reused_external_ids(conflicts)
    store = current_app.extensions["payouts_store"]
    ref = BatchRef(g.client_name, batch["batch_id"])
    g.batch_id = ref.batch_id
    refuse_new_batch_when_backlog_full(store, ref)
    try:
        created = accept_batch(store, ref, fingerprint(batch), orders, settings.max_batch_amount_cents,
                               settings.max_daily_amount_cents)
    except BatchConflict:
        raise Problem(409, "Batch conflict",
                      f"batch_id {ref.batch_id!r} was already submitted with a different "
                      "payload; a batch_id names one payload forever.") from None
    except ExternalIdReused as exc:
        _refuse_reused_external_ids(exc.conflicts)
    except ValueCapExceeded as exc:
        _refuse_value(exc)
    if created:
        BATCHES_ACCEPTED.inc()
        ITEMS_ACCEPTED.inc(len(orders))
    location = f"/api/payouts/{ref.batch_id}"
    # A replay of a batch that left Redis answers from the ledger, like a GET.
    report = store.report_json(ref) if created else reads.report_json(store, ledger(), ref)
    return _report_response(report, 202 if created else 200, {"Location": location})


@bp.get("/api/payouts/<batch_id>")
@read_limit
def get_batch(batch_id: str):
    _batch_id_schema.load({"batch_id": batch_id})
    g.batch_id = batch_id
    # Another client's batch answers exactly like an unknown one: the key is per client.
    # Redis while it holds the batch, then the ledger (SPEC §10).
    ref, store = BatchRef(g.client_name, batch_id), current_app.extensions["payouts_store"]
    if request.accept_mimetypes.best_match(["application/json", "text/csv"]) == "text/csv":
        rows = reads.csv_stream(store, ledger(), ref)
        if rows is None:
            raise Problem(404, "Unknown batch", f"No batch with batch_id {batch_id!r}.")
        return Response(rows, mimetype="text/csv", headers={
            "Content-Disposition": f'attachment; filename="{batch_id}.csv"', "Vary": "Accept"})
    report = reads.report_json(store, ledger(), ref)
    if report is None:
        raise Problem(404, "Unknown batch", f"No batch with batch_id {batch_id!r}.")
    return _report_response(report, 200, {"Vary": "Accept"})


_history_query = HistoryQuerySchema()
_items_query = ItemsQuerySchema()


def _ms(instant) -> int:
    return int(instant.timestamp() * 1000)


@bp.get("/api/payouts")
@read_limit
def list_batches():
    """The client's batches, newest first, as summaries; `next_cursor` continues the walk."""
    query = _history_query.load(request.args.to_dict())
    # Creation times are whole milliseconds: "after" and "before" exclude the instant itself.
    oldest = _ms(query["created_after"]) + 1 if "created_after" in query else None
    newest = _ms(query["created_before"]) - 1 if "created_before" in query else None
    batches, position = reads.merged_history(
        current_app.extensions["payouts_store"], ledger(), g.client_name, query["limit"],
        query.get("cursor"), query.get("status"), newest, oldest)
    return {"batches": batches, "next_cursor": encode_cursor(*position) if position else None}


@bp.get("/api/payouts/<batch_id>/items")
@read_limit
def list_items(batch_id: str):
    """One batch's items in submission order, e.g. only the failed ones to fix and resubmit."""
    _batch_id_schema.load({"batch_id": batch_id})
    query = _items_query.load(request.args.to_dict())
    g.batch_id = batch_id
    start = query["cursor"][0] if "cursor" in query else 0
    found = reads.batch_items(current_app.extensions["payouts_store"], ledger(),
                              BatchRef(g.client_name, batch_id), query["limit"], start,
                              query.get("status"), max_scan=ITEMS_SCAN_MAX)
    if found is None:
        raise Problem(404, "Unknown batch", f"No batch with batch_id {batch_id!r}.")
    items, following = found
    return {"batch_id": batch_id, "items": items,
            "next_cursor": encode_cursor(following) if following is not None else None}
