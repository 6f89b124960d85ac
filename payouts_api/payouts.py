"""The payouts resource: submit a batch, read its report."""

from __future__ import annotations

import json

from flask import Blueprint, Response, current_app, g, request
from marshmallow.experimental.context import Context

from payouts_api.extensions import limiter
from payouts_api.metrics import BATCHES_ACCEPTED, ITEMS_ACCEPTED
from payouts_api.problems import Problem
from payouts_api.schemas import BatchRequestSchema
from payouts_tasks.batches import accept_batch
from payouts_tasks.pix_keys import mask_pix_key
from payouts_tasks.store import BatchConflict, Order, fingerprint

bp = Blueprint("payouts", __name__)
_batch_schema = BatchRequestSchema()


def _write_limit() -> str:
    return current_app.config["PAYOUTS_RATELIMIT_WRITE"]


def _read_limit() -> str:
    return current_app.config["PAYOUTS_RATELIMIT_READ"]


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


@bp.post("/api/payouts")
@bp.post("/payouts/batch")
@limiter.limit(_write_limit)
def submit_batch():
    limits = {"max_items": current_app.config["PAYOUTS_MAX_ITEMS"],
              "max_amount_cents": current_app.config["PAYOUTS_MAX_AMOUNT_CENTS"]}
    with Context(limits):
        batch = _batch_schema.load(_json_body())
    orders = [Order(index=i, external_id=item["external_id"], user_id=item["user_id"],
                    amount_cents=item["amount_cents"], pix_key=item["pix_key"],
                    pix_key_masked=mask_pix_key(item["pix_key"], item["pix_key_type"]),
                    pix_key_type=item["pix_key_type"])
              for i, item in enumerate(batch["items"])]
    store = current_app.extensions["payouts_store"]
    g.batch_id = batch["batch_id"]
    try:
        created = accept_batch(store, batch["batch_id"], fingerprint(batch), orders,
                               submitted_by=g.client_name)
    except BatchConflict:
        raise Problem(409, "Batch conflict",
                      f"batch_id {batch['batch_id']!r} was already submitted with a different "
                      "payload; a batch_id names one payload forever.") from None
    if created:
        BATCHES_ACCEPTED.inc()
        ITEMS_ACCEPTED.inc(len(orders))
    location = f"/api/payouts/{batch['batch_id']}"
    report = store.report_json(batch["batch_id"])
    return _report_response(report, 202 if created else 200, {"Location": location})


@bp.get("/api/payouts/<batch_id>")
@limiter.limit(_read_limit)
def get_batch(batch_id: str):
    g.batch_id = batch_id
    report = current_app.extensions["payouts_store"].report_json(batch_id)
    if report is None:
        raise Problem(404, "Unknown batch", f"No batch with batch_id {batch_id!r}.")
    return _report_response(report, 200)
