"""An item's story: `GET /api/payouts/<batch_id>/items/<external_id>` answers the batch's
item(s) with that external_id, each with its events from the ledger, in order."""

from __future__ import annotations

from apispec import APISpec
from flask import Blueprint, current_app, g
from marshmallow import Schema, fields

from payouts_api.extensions import read_limit
from payouts_api.ledger import ledger
from payouts_api.problems import Problem
from payouts_api.schemas import BatchIdSchema, IndexedItemSchema, id_field
from payouts_core.ledger.reads import item_story
from payouts_core.store import BatchRef

bp = Blueprint("items", __name__)


class ItemPathSchema(BatchIdSchema):
    external_id = id_field("Your id for the payout.", "u1-001")


class EventSchema(Schema):
    seq = fields.Integer(required=True, metadata={"description": "Position in the batch's events."})
    at = fields.String(required=True, metadata={"description": "When (UTC, milliseconds)."})
    type = fields.String(required=True, metadata={
        "description": "accepted, provider_call, provider_error, lookup, paid, failed, duplicate."})
    attempt = fields.Integer(required=True, allow_none=True,
                             metadata={"description": "The provider call it belongs to."})
    code = fields.String(required=True, allow_none=True, metadata={
        "description": "SPI reason code of an error or failure."})
    detail = fields.Dict(required=True, metadata={
        "description": "More about it: claim_generation, duration_ms, e2e_id, failure_reason, ..."})


class ItemStorySchema(IndexedItemSchema):
    events = fields.List(fields.Nested(EventSchema), required=True, metadata={
        "description": "Oldest first; a batch still running shows events up to the archive lag."})


class ItemStoriesSchema(Schema):
    batch_id = fields.String(required=True)
    external_id = fields.String(required=True)
    items = fields.List(fields.Nested(ItemStorySchema), required=True, metadata={
        "description": "Usually one; two items of one batch may share an external_id."})


_path = ItemPathSchema()


@bp.get("/api/payouts/<batch_id>/items/<external_id>")
@read_limit
def item(batch_id: str, external_id: str):
    """What happened to one payout, step by step, and when."""
    _path.load({"batch_id": batch_id, "external_id": external_id})
    g.batch_id = batch_id
    story = item_story(current_app.extensions["payouts_store"], ledger(),
                       BatchRef(g.client_name, batch_id), external_id)
    if story is None:
        raise Problem(404, "Unknown batch", f"No batch with batch_id {batch_id!r}.")
    if not story:
        raise Problem(404, "Unknown item", f"No item with external_id {external_id!r} in this batch.")
    return {"batch_id": batch_id, "external_id": external_id, "items": story}


def document(spec: APISpec, reads: dict) -> None:
    """The route in the OpenAPI document (`payouts_api/openapi.py` calls this)."""
    spec.components.schema("ItemStories", schema=ItemStoriesSchema)
    path = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in ("batch_id", "external_id")]
    spec.path(path="/api/payouts/{batch_id}/items/{external_id}", operations={"get": {
        "summary": "An item's story: the item(s) with this external_id and their events",
        "parameters": path,
        "responses": {"200": {"description": "The item(s) and their events.",
                              "content": {"application/json": {"schema": "ItemStories"}}},
                      "404": {"description": "Unknown batch (or another client's), or no such item.",
                              "content": {"application/problem+json": {"schema": "Problem"}}},
                      **reads},
    }})
