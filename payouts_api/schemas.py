"""Marshmallow schemas: they validate requests and, through apispec, write the OpenAPI document.

Limits that operators configure (max items, max amount) come from the request's Context, so
one schema class serves every configuration.
"""

from __future__ import annotations

import numbers

from marshmallow import Schema, ValidationError, fields, validates
from marshmallow.experimental.context import Context
from marshmallow.validate import Length, Range


class StrictInteger(fields.Integer):
    """An integer that refuses floats, numeric strings and booleans (True is an int in Python)."""

    def __init__(self, **kwargs):
        super().__init__(strict=True, **kwargs)

    def _validated(self, value):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise self.make_error("invalid")
        return super()._validated(value)


class PayoutItemSchema(Schema):
    external_id = fields.String(required=True, validate=Length(1, 64),
                                metadata={"description": "Your id for this payout; paid at most once, ever."})
    user_id = fields.String(required=True, validate=Length(1, 64))
    amount_cents = StrictInteger(required=True, validate=Range(min=1),
                                 metadata={"description": "Integer cents, at least 1, at most the "
                                           "configured cap (default 1499999)."})
    pix_key = fields.String(required=True, validate=Length(1, 140),
                            metadata={"description": "The receiver's PIX key."})

    @validates("amount_cents")
    def _within_cap(self, value: int, **_kwargs) -> None:
        cap = Context.get({}).get("max_amount_cents")
        if cap is not None and value > cap:
            raise ValidationError(f"Must be at most {cap} cents.")


class BatchRequestSchema(Schema):
    batch_id = fields.String(required=True, validate=Length(1, 64),
                             metadata={"description": "Names one payload forever."})
    items = fields.List(fields.Nested(PayoutItemSchema), required=True, validate=Length(min=1))

    @validates("items")
    def _not_too_many(self, value: list, **_kwargs) -> None:
        cap = Context.get({}).get("max_items")
        if cap is not None and len(value) > cap:
            raise ValidationError(f"At most {cap} items per batch.")


class DuplicateOfSchema(Schema):
    batch_id = fields.String(required=True)
    index = fields.Integer(required=True, metadata={"description": "Item position in that batch."})
    e2e_id = fields.String(metadata={"description": "EndToEndId of the existing payment."})


class ItemReportSchema(Schema):
    external_id = fields.String(required=True)
    user_id = fields.String(required=True)
    amount_cents = fields.Integer(required=True)
    pix_key = fields.String(required=True, metadata={"description": "Masked PIX key."})
    status = fields.String(required=True, metadata={
        "enum": ["pending", "processing", "paid", "failed", "duplicate"]})
    attempts = fields.Integer(required=True, metadata={"description": "Provider calls made."})
    e2e_id = fields.String(metadata={"description": "PIX EndToEndId (32 chars) when paid."})
    failure_code = fields.String(metadata={"description": "SPI reason code when failed."})
    failure_reason = fields.String()
    duplicate_of = fields.Nested(DuplicateOfSchema)


class BatchReportSchema(Schema):
    batch_id = fields.String(required=True)
    status = fields.String(required=True, metadata={"enum": ["processing", "completed"]})
    total = fields.Integer(required=True)
    processed = fields.Integer(required=True, metadata={
        "description": "Items in a final state = successful + failed + duplicates."})
    successful = fields.Integer(required=True)
    failed = fields.Integer(required=True)
    duplicates = fields.Integer(required=True)
    created_at = fields.String(required=True)
    completed_at = fields.String(required=True, allow_none=True)
    submitted_by = fields.String()
    details = fields.List(fields.Nested(ItemReportSchema), required=True)


class FieldErrorSchema(Schema):
    field = fields.String(required=True, metadata={"description": "Path, e.g. items.3.pix_key"})
    message = fields.String(required=True)


class ProblemSchema(Schema):
    """RFC 9457 problem details."""

    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    instance = fields.String()
    errors = fields.List(fields.Nested(FieldErrorSchema))
