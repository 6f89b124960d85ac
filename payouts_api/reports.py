"""Reports for finance from the ledger: `GET /api/reports/daily?from=YYYY-MM-DD&to=YYYY-MM-DD`,
per UTC day the items that reached a final state: paid, failed by code, duplicates."""

from __future__ import annotations

from apispec import APISpec
from flask import Blueprint, g, request
from marshmallow import Schema, ValidationError, fields, validates_schema

from payouts_api.extensions import read_limit
from payouts_api.ledger import ledger

bp = Blueprint("reports", __name__)

MAX_DAYS = 366  # a year, leap or not: the answer and its query stay small


class DailyQuerySchema(Schema):
    from_ = fields.Date(data_key="from", required=True, format="%Y-%m-%d",
                        metadata={"description": "First UTC day, YYYY-MM-DD.", "example": "2026-12-01"})
    to = fields.Date(required=True, format="%Y-%m-%d", metadata={
        "description": f"Last UTC day (included), YYYY-MM-DD; at most {MAX_DAYS} days in all.",
        "example": "2026-12-31"})

    @validates_schema
    def _range(self, data: dict, **_kwargs) -> None:
        if "from_" not in data or "to" not in data:
            return
        if data["to"] < data["from_"]:
            raise ValidationError("Must not be before `from`.", "to")
        if (data["to"] - data["from_"]).days + 1 > MAX_DAYS:
            raise ValidationError(f"At most {MAX_DAYS} days from `from`.", "to")


class CountSchema(Schema):
    count = fields.Integer(required=True)
    amount_cents = fields.Integer(required=True)


class FailedSchema(CountSchema):
    by_code = fields.Dict(keys=fields.String(), values=fields.Nested(CountSchema), required=True,
                          metadata={"description": "Per SPI reason code, e.g. AC03."})


class DaySchema(Schema):
    date = fields.String(required=True, metadata={"example": "2026-12-01"})
    paid = fields.Nested(CountSchema, required=True)
    failed = fields.Nested(FailedSchema, required=True)
    duplicates = fields.Nested(CountSchema, required=True)


class DailyReportSchema(Schema):
    from_ = fields.String(data_key="from", required=True)
    to = fields.String(required=True)
    days = fields.List(fields.Nested(DaySchema), required=True, metadata={
        "description": "Every day of the range, oldest first, by the UTC day each item became "
                       "final; the last minutes may still be on their way to the ledger."})


_query = DailyQuerySchema()


@bp.get("/api/reports/daily")
@read_limit
def daily():
    query = _query.load(request.args.to_dict())
    days = ledger().daily(g.client_name, query["from_"], query["to"])
    return {"from": query["from_"].isoformat(), "to": query["to"].isoformat(), "days": days}


def document(spec: APISpec, reads: dict) -> None:
    """The route in the OpenAPI document (`payouts_api/openapi.py` calls this)."""
    spec.components.schema("DailyReport", schema=DailyReportSchema)
    spec.path(path="/api/reports/daily", operations={"get": {
        "summary": "Per UTC day: paid, failed by code, duplicates (counts and amounts)",
        "parameters": [{"in": "query", "schema": DailyQuerySchema}],
        "responses": {"200": {"description": "The days of the range.",
                              "content": {"application/json": {"schema": "DailyReport"}}},
                      **reads},
    }})
