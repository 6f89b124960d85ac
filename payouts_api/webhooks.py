"""The webhooks resource: a client's endpoints, their secrets and their delivery log.

Every lookup is by the client's own key, so another client's endpoint or delivery answers
exactly like an unknown one (404). Deliveries are sent by the worker (payouts_tasks.webhooks);
the only thing this module enqueues is a redelivery a client asks for.
"""

from __future__ import annotations

import re

from flask import Blueprint, current_app, g, request
from marshmallow.experimental.context import Context

from payouts_api.extensions import limiter, read_limit
from payouts_api.payouts import parse_json_strictly
from payouts_api.problems import Problem
from payouts_api.schemas import (
    DeliveryQuerySchema,
    RotateSecretSchema,
    WebhookCreateSchema,
)
from payouts_core.store import encode_cursor
from payouts_core.webhooks import MAX_ENDPOINTS, TooManyEndpoints, WebhookStore, allowed_ports
from payouts_tasks.webhooks import deliver, redrive_grace_ms

bp = Blueprint("webhooks", __name__)
_create_schema = WebhookCreateSchema()
_rotate_schema = RotateSecretSchema()
_deliveries_query = DeliveryQuerySchema()
ENDPOINT_ID = re.compile(r"we_[0-9a-f]{32}")
DELIVERY_ID = re.compile(r"msg_[0-9a-f]{32}")
# An answer holding a signing secret is kept by no cache, shared or the client's own (RFC 9111).
SECRET_HEADERS = {"Cache-Control": "no-store"}


def _write_limit() -> str:
    return current_app.config["SETTINGS"].ratelimit_write


def _hooks() -> WebhookStore:
    return WebhookStore(current_app.extensions["payouts_store"].client)


def _body(optional: bool = False) -> dict:
    if optional and not request.get_data(cache=True):
        return {}
    if not request.is_json:
        raise Problem(415, "Unsupported media type", "Send application/json.")
    body = parse_json_strictly(request.get_data(cache=True))
    if not isinstance(body, dict):
        raise Problem(400, "Malformed request", "The request body must be a JSON object.")
    return body


def _unknown(endpoint_id: str) -> Problem:
    return Problem(404, "Unknown webhook", f"No webhook endpoint with id {endpoint_id[:80]!r}.")


def _endpoint_or_404(endpoint_id: str) -> dict:
    found = _hooks().endpoint(g.client_name, endpoint_id) if ENDPOINT_ID.fullmatch(endpoint_id) else None
    if found is None:
        raise _unknown(endpoint_id)
    return found


@bp.post("/api/webhooks")
@limiter.limit(_write_limit)
def add_webhook():
    """Register an endpoint; the answer holds its signing secret, shown this once."""
    settings = current_app.config["SETTINGS"]
    with Context({"allow_http": settings.webhooks_allow_http,
                  "allow_private": settings.webhooks_allow_private,
                  "ports": allowed_ports(settings.webhook_ports, settings.webhooks_allow_http)}):
        wanted = _create_schema.load(_body())
    try:
        created = _hooks().add_endpoint(g.client_name, wanted["url"], wanted["events"],
                                        wanted["description"])
    except TooManyEndpoints:
        raise Problem(422, "Too many webhook endpoints",
                      f"A client may register {MAX_ENDPOINTS} endpoints; delete one first.") from None
    return created, 201, {"Location": f"/api/webhooks/{created['id']}", **SECRET_HEADERS}


@bp.get("/api/webhooks")
@read_limit
def list_webhooks():
    return {"webhooks": _hooks().endpoints(g.client_name)}


@bp.get("/api/webhooks/<endpoint_id>")
@read_limit
def get_webhook(endpoint_id: str):
    return _endpoint_or_404(endpoint_id)


@bp.delete("/api/webhooks/<endpoint_id>")
@limiter.limit(_write_limit)
def delete_webhook(endpoint_id: str):
    if not (ENDPOINT_ID.fullmatch(endpoint_id) and _hooks().delete_endpoint(g.client_name, endpoint_id)):
        raise _unknown(endpoint_id)
    return "", 204


@bp.post("/api/webhooks/<endpoint_id>/rotate-secret")
@limiter.limit(_write_limit)
def rotate_secret(endpoint_id: str):
    """A new secret, shown once; the current one keeps signing beside it for the grace period."""
    _endpoint_or_404(endpoint_id)
    wanted = _rotate_schema.load(_body(optional=True))
    grace = wanted.get("grace_period_s", current_app.config["SETTINGS"].webhook_rotation_grace_s)
    rotated = _hooks().rotate_secret(g.client_name, endpoint_id, grace)
    if rotated is None:  # deleted meanwhile
        raise _unknown(endpoint_id)
    return rotated, 200, SECRET_HEADERS


@bp.get("/api/webhooks/<endpoint_id>/deliveries")
@read_limit
def list_deliveries(endpoint_id: str):
    """The endpoint's deliveries, newest first: status, attempts, last answer, next attempt."""
    _endpoint_or_404(endpoint_id)
    query = _deliveries_query.load(request.args.to_dict())
    deliveries, position = _hooks().deliveries(g.client_name, endpoint_id, query["limit"],
                                               query.get("cursor"))
    return {"deliveries": deliveries, "next_cursor": encode_cursor(*position) if position else None}


@bp.post("/api/webhooks/<endpoint_id>/deliveries/<delivery_id>/redeliver")
@limiter.limit(_write_limit)
def redeliver(endpoint_id: str, delivery_id: str):
    """Send a delivery again (same webhook-id), whatever its status, with a fresh retry window."""
    _endpoint_or_404(endpoint_id)
    hooks = _hooks()
    grace = redrive_grace_ms(current_app.config["SETTINGS"])
    if not (DELIVERY_ID.fullmatch(delivery_id)
            and hooks.redeliver(g.client_name, endpoint_id, delivery_id, grace)):
        raise Problem(404, "Unknown delivery", f"No delivery {delivery_id[:80]!r} for this webhook.")
    deliver.delay(g.client_name, delivery_id)
    return hooks.delivery(g.client_name, delivery_id), 202
