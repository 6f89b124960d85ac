"""Marshmallow schemas: they validate requests and, through apispec, write the OpenAPI document.

Limits that operators configure (max items, max amount) come from the request's Context, so
one schema class serves every configuration. The cost of a load is bounded before per-item work:
the item count is checked before any item is, an object's key count before its fields, and item
validation stops once MAX_FIELD_ERRORS errors are collected.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from datetime import UTC

from marshmallow import Schema, ValidationError, fields, post_load, pre_load, utils, validates
from marshmallow.experimental.context import Context
from marshmallow.validate import Length, OneOf, Range, Regexp

from payouts_core.pix_keys import KEY_TYPES, MAX_RAW_LENGTH, InvalidPixKey, parse_pix_key
from payouts_core.rules import ItemStatus
from payouts_core.store import decode_cursor
from payouts_core.webhooks import (
    EVENT_TYPES,
    MAX_URL_LENGTH,
    DestinationRefused,
    check_literal_host,
    parse_url,
)

ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
ID_RULE = "1-64 characters of A-Z a-z 0-9 . _ : -"
MAX_FIELD_ERRORS = 100  # field errors a 422 reports; item validation stops once it has this many
MAX_OBJECT_KEYS = 20  # keys of the batch or of an item (5 are known) before their fields are read
ERRORS_OMITTED = "_omitted"  # key of a note where validation stopped; problems.py moves it to detail


class StrictInteger(fields.Integer):
    """An integer that refuses floats, numeric strings and booleans (True is an int in Python)."""

    def __init__(self, **kwargs):
        super().__init__(strict=True, **kwargs)

    def _validated(self, value):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise self.make_error("invalid")
        return super()._validated(value)


class FullMatch(Regexp):
    """A Regexp that must match the whole value (a plain `$` also matches before a final newline).

    It stays a Regexp, so apispec documents the pattern.
    """

    def __call__(self, value: str) -> str:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


def id_field(description: str, example: str) -> fields.String:
    """batch_id, external_id, user_id: 1-64 characters of [A-Za-z0-9._:-] (ASCII only)."""
    return fields.String(required=True, validate=FullMatch(ID_PATTERN, error=f"Use {ID_RULE}."),
                         metadata={"description": f"{description} {ID_RULE}.", "example": example,
                                   "minLength": 1, "maxLength": 64})


class PixKeyField(fields.String):
    """A PIX key, validated and normalised by `payouts_core.pix_keys`; loads as a `PixKey`.

    When the item also names a valid `pix_key_type`, the key must be of that type. Error
    messages never repeat the submitted key (personal data).
    """

    def _deserialize(self, value, attr, data, **kwargs):
        raw = super()._deserialize(value, attr, data, **kwargs)
        expected = data.get("pix_key_type") if isinstance(data, Mapping) else None
        try:
            return parse_pix_key(raw, expected if expected in KEY_TYPES else None)
        except InvalidPixKey as exc:
            raise ValidationError(exc.message) from None


def _count_messages(messages) -> int:
    """How many field errors marshmallow's nested messages hold."""
    if isinstance(messages, dict):
        return sum(_count_messages(value) for value in messages.values())
    if isinstance(messages, list):
        return sum(_count_messages(value) if isinstance(value, dict | list) else 1 for value in messages)
    return 1


def _not_too_many_keys(data) -> None:
    """Every unknown key is an error of its own: refuse a huge object once instead."""
    if isinstance(data, Mapping) and len(data) > MAX_OBJECT_KEYS:
        raise ValidationError(f"At most {MAX_OBJECT_KEYS} fields in an object; this one has {len(data)}.")


class ItemsField(fields.List):
    """The batch's items: counted against `max_items` (Context) before any item is validated, and
    validated only until MAX_FIELD_ERRORS field errors are collected, so a request's cost is
    bounded by the caps, not by the body (3 MB of `{}` built 4,000,001 errors before)."""

    def _deserialize(self, value, attr, data, **kwargs) -> list:
        if not utils.is_collection(value):
            raise self.make_error("invalid")
        cap = Context.get({}).get("max_items")
        if cap is not None and len(value) > cap:
            raise ValidationError(f"At most {cap} items per batch; this one has {len(value)}.")
        result, errors, collected = [], {}, 0
        for index, each in enumerate(value):
            try:
                result.append(self.inner.deserialize(each, **kwargs))
            except ValidationError as error:
                errors[index] = error.messages
                collected += _count_messages(error.messages)
                if collected >= MAX_FIELD_ERRORS and index + 1 < len(value):
                    errors[ERRORS_OMITTED] = (f"Validation stopped after {collected} invalid fields: "
                                              f"items {index + 1} to {len(value) - 1} of {len(value)} "
                                              "were not checked.")
                    break
        if errors:
            raise ValidationError(errors)
        return result


class PayoutItemSchema(Schema):
    external_id = id_field("Your id for this payout; paid at most once, ever.", "u1-001")
    user_id = id_field("The receiver in your platform.", "u1")
    amount_cents = StrictInteger(required=True, validate=Range(min=1),
                                 metadata={"description": "Integer cents, at least 1, at most the "
                                           "configured cap (default 1499999).", "example": 1500})
    pix_key = PixKeyField(required=True, metadata={
        "description": "The receiver's PIX key, stored normalised: CPF `123.456.789-09` or "
                       "`12345678909`; CNPJ `12.345.678/0001-95` or alphanumeric `12.ABC.345/01DE-35`; "
                       "phone in E.164 `+5511912345678` (spaces, dashes and parentheses allowed); "
                       "e-mail (lowercased, at most 77 characters); EVP random key (a UUID). "
                       "ASCII only.",
        "minLength": 1, "maxLength": MAX_RAW_LENGTH, "example": "u1@email.com"})
    pix_key_type = fields.String(validate=OneOf(KEY_TYPES), metadata={
        "description": "Optional; when given, it must be the type of pix_key. The report always "
                       "shows the detected type."})

    @pre_load
    def _few_keys(self, data, **_kwargs):
        _not_too_many_keys(data)
        return data

    @post_load
    def _split_pix_key(self, item: dict, **_kwargs) -> dict:
        key = item["pix_key"]
        item["pix_key"], item["pix_key_type"] = key.value, key.type
        return item

    @validates("amount_cents")
    def _within_cap(self, value: int, **_kwargs) -> None:
        cap = Context.get({}).get("max_amount_cents")
        if cap is not None and value > cap:
            raise ValidationError(f"Must be at most {cap} cents.")


class BatchRequestSchema(Schema):
    batch_id = id_field("Names one payload forever.", "2025-10-05-A")
    items = ItemsField(fields.Nested(PayoutItemSchema), required=True, validate=Length(min=1))

    @pre_load
    def _few_keys(self, data, **_kwargs):
        _not_too_many_keys(data)
        return data


class BatchIdSchema(Schema):
    """The batch id in a path: checked like the body's, so both accept exactly the same ids."""

    batch_id = id_field("Names one payload forever.", "2025-10-05-A")


class DuplicateOfSchema(Schema):
    batch_id = fields.String(required=True)
    index = fields.Integer(required=True, metadata={"description": "Item position in that batch."})
    e2e_id = fields.String(metadata={"description": "EndToEndId of the existing payment."})


class ItemReportSchema(Schema):
    external_id = fields.String(required=True)
    user_id = fields.String(required=True)
    amount_cents = fields.Integer(required=True)
    pix_key = fields.String(required=True, metadata={"description": "Masked PIX key, e.g. u***@email.com."})
    pix_key_type = fields.String(metadata={"enum": list(KEY_TYPES), "description": "Detected key type."})
    status = fields.String(required=True, metadata={
        "enum": [status.value for status in ItemStatus]})
    attempts = fields.Integer(required=True, metadata={"description": "Provider calls made."})
    e2e_id = fields.String(metadata={"description": "PIX EndToEndId (32 chars) when paid."})
    failure_code = fields.String(metadata={"description": "SPI reason code when failed."})
    failure_reason = fields.String()
    duplicate_of = fields.Nested(DuplicateOfSchema)


class BatchSummarySchema(Schema):
    """The report without its details: what the history lists and the webhook event carries."""

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


class BatchReportSchema(BatchSummarySchema):
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


# -- history and items by status (GET /api/payouts, GET /api/payouts/<id>/items) ---------------

MAX_PAGE = 100
BATCH_STATES = ("processing", "completed")


class PageQuerySchema(Schema):
    """`limit` and an opaque `cursor` (the `next_cursor` of the previous page)."""

    cursor_parts: tuple[type, ...] = ()

    def valid_position(self, position: tuple) -> bool:
        return True

    limit = fields.Integer(load_default=50, validate=Range(min=1, max=MAX_PAGE),
                           metadata={"description": f"Entries per page, 1-{MAX_PAGE}."})
    cursor = fields.String(validate=Length(max=512), metadata={
        "description": "`next_cursor` of the previous page; omit for the first page."})

    @post_load
    def _position(self, query: dict, **_kwargs) -> dict:
        if "cursor" in query:
            try:
                query["cursor"] = decode_cursor(query["cursor"], *self.cursor_parts)
            except ValueError as exc:
                raise ValidationError(str(exc), "cursor") from None
            if not self.valid_position(query["cursor"]):
                raise ValidationError("not a cursor this API returned", "cursor")
        return query


class HistoryQuerySchema(PageQuerySchema):
    cursor_parts = (int, str)

    status = fields.String(validate=OneOf(BATCH_STATES), metadata={"description": "Batch status."})
    created_after = fields.AwareDateTime(default_timezone=UTC, metadata={
        "description": "Only batches created after this instant (ISO 8601; UTC when no offset)."})
    created_before = fields.AwareDateTime(default_timezone=UTC, metadata={
        "description": "Only batches created before this instant (ISO 8601; UTC when no offset)."})


class ItemsQuerySchema(PageQuerySchema):
    cursor_parts = (int,)

    def valid_position(self, position: tuple) -> bool:
        return position[0] >= 0  # an item index: a negative one answered 500

    status = fields.String(validate=OneOf([status.value for status in ItemStatus]),
                           metadata={"description": "Only items in this status, e.g. failed."})


class BatchPageSchema(Schema):
    batches = fields.List(fields.Nested(BatchSummarySchema), required=True,
                          metadata={"description": "Newest first."})
    next_cursor = fields.String(required=True, allow_none=True, metadata={
        "description": "Pass as `cursor` for the next page; null on the last page."})


class IndexedItemSchema(ItemReportSchema):
    index = fields.Integer(required=True, metadata={"description": "Position in the batch."})


class ItemPageSchema(Schema):
    batch_id = fields.String(required=True)
    items = fields.List(fields.Nested(IndexedItemSchema), required=True,
                        metadata={"description": "In submission order."})
    next_cursor = fields.String(required=True, allow_none=True, metadata={
        "description": "Pass as `cursor` for the next page; null on the last page."})


# -- webhooks (/api/webhooks) ------------------------------------------------------------------

DELIVERY_STATUSES = ("pending", "delivered", "failed", "refused")
MAX_SECRET_GRACE_S = 7 * 24 * 3600


class WebhookCreateSchema(Schema):
    """An endpoint to register. The URL is checked with the settings in the Context: https
    (http only where allowed), and no literal private or loopback address unless allowed."""

    url = fields.String(required=True, validate=Length(min=1, max=MAX_URL_LENGTH), metadata={
        "description": "Where events are POSTed: https://, no user info; resolved and checked "
                       "against private addresses before every delivery.",
        "example": "https://platform.example/hooks/payouts"})
    events = fields.List(fields.String(validate=OneOf(EVENT_TYPES)), load_default=list(EVENT_TYPES),
                         validate=Length(min=1, max=len(EVENT_TYPES)),
                         metadata={"description": "Event types to receive (default: all)."})
    description = fields.String(load_default="", validate=Length(max=200))

    @validates("url")
    def _destination(self, value: str, **_kwargs) -> None:
        allowed = Context.get({})
        try:
            check_literal_host(parse_url(value, allowed.get("allow_http", False),
                                         allowed.get("ports")),
                               allowed.get("allow_private", False))
        except DestinationRefused as exc:
            raise ValidationError(str(exc)) from None

    @post_load
    def _unique_events(self, data: dict, **_kwargs) -> dict:
        data["events"] = list(dict.fromkeys(data["events"]))
        return data


class RotateSecretSchema(Schema):
    grace_period_s = fields.Integer(validate=Range(min=0, max=MAX_SECRET_GRACE_S), metadata={
        "description": "Seconds the current secret keeps signing beside the new one "
                       "(default PAYOUTS_WEBHOOK_ROTATION_GRACE_S, a day)."})


class WebhookSchema(Schema):
    id = fields.String(required=True, metadata={"example": "we_0123456789abcdef0123456789abcdef"})
    url = fields.String(required=True)
    events = fields.List(fields.String(metadata={"enum": list(EVENT_TYPES)}), required=True)
    description = fields.String(required=True)
    created_at = fields.String(required=True)
    previous_secret_expires_at = fields.String(required=True, allow_none=True, metadata={
        "description": "Until then, the previous secret also signs (after a rotation)."})


class WebhookWithSecretSchema(WebhookSchema):
    secret = fields.String(required=True, metadata={
        "description": "The signing secret (Standard Webhooks `whsec_...`): shown only now."})


class WebhookListSchema(Schema):
    webhooks = fields.List(fields.Nested(WebhookSchema), required=True)


class DeliverySchema(Schema):
    id = fields.String(required=True, metadata={
        "description": "The `webhook-id` header: the same on every attempt; deduplicate on it."})
    endpoint_id = fields.String(required=True)
    event_id = fields.String(required=True)
    event_type = fields.String(required=True, metadata={"enum": list(EVENT_TYPES)})
    status = fields.String(required=True, metadata={"enum": list(DELIVERY_STATUSES), "description":
                           "refused: the URL resolved to an address the SSRF guard refuses."})
    attempts = fields.Integer(required=True)
    last_status_code = fields.Integer(required=True, allow_none=True)
    last_error = fields.String(required=True, allow_none=True)
    created_at = fields.String(required=True)
    next_attempt_at = fields.String(required=True, allow_none=True)
    completed_at = fields.String(required=True, allow_none=True)


class DeliveryQuerySchema(PageQuerySchema):
    cursor_parts = (int, str)


class DeliveryPageSchema(Schema):
    deliveries = fields.List(fields.Nested(DeliverySchema), required=True,
                             metadata={"description": "Newest first."})
    next_cursor = fields.String(required=True, allow_none=True, metadata={
        "description": "Pass as `cursor` for the next page; null on the last page."})
