"""The daily report's query, the ledger routes' keys and their OpenAPI entries (the real app and
the session's PostgreSQL; the sums themselves are in tests/core and tests/e2e test_ledger_reads)."""

from __future__ import annotations

import pytest

from payouts_core.settings import key_digest
from tests.conftest import API_KEY


@pytest.mark.parametrize(("query", "fields"), [
    ("", ["from", "to"]),
    ("from=2026-12-01", ["to"]),
    ("from=2026-13-01&to=2026-12-31", ["from"]),
    ("from=20261201&to=2026-12-31", ["from"]),
    ("from=2026-12-01T00:00:00&to=2026-12-31", ["from"]),
    ("from=2026-12-02&to=2026-12-01", ["to"]),
    ("from=2025-01-01&to=2026-01-02", ["to"]),  # 367 days
    ("from=2026-12-01&to=2026-12-01&colour=blue", ["colour"]),
])
def test_bad_daily_queries_are_422_with_the_field(client, query, fields):
    response = client.get(f"/api/reports/daily?{query}")

    assert response.status_code == 422, response.get_json()
    assert response.mimetype == "application/problem+json"
    assert sorted(e["field"] for e in response.get_json()["errors"]) == fields


def test_a_year_of_days_is_answered_day_by_day(make_app, uid):
    client = make_app(api_keys=((f"r{uid}", key_digest(API_KEY)),)).test_client()

    body = client.get("/api/reports/daily?from=2024-01-01&to=2024-12-31").get_json()

    assert body["from"] == "2024-01-01" and body["to"] == "2024-12-31"
    assert len(body["days"]) == 366 and body["days"][59]["date"] == "2024-02-29"
    assert all(d["paid"]["count"] == 0 for d in body["days"])  # a fresh client has no payouts


@pytest.mark.parametrize("path", ["/api/reports/daily?from=2026-12-01&to=2026-12-01",
                                  "/api/payouts/b1/items/u1-001"])
def test_the_ledger_routes_need_a_key(client, path):
    assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.get(path, headers={"X-API-Key": ""}).status_code == 401


def test_a_ledger_that_does_not_answer_is_503_not_404(make_app, uid):
    from payouts_core.ledger.reads import LedgerReads

    app = make_app()
    reader = app.extensions["payouts_ledger"] = LedgerReads(
        "postgresql://postgres@127.0.0.1:1/payouts", timeout_s=1)
    client = app.test_client()
    held = {"batch_id": f"held-{uid}", "items": [
        {"external_id": f"held-{uid}", "user_id": "u", "amount_cents": 5, "pix_key": "a@b.com"}]}
    assert client.post("/api/payouts", json=held).status_code == 202

    try:
        # What Redis holds needs no PostgreSQL.
        assert client.get(f"/api/payouts/held-{uid}").status_code == 200
        assert client.get(f"/api/payouts/held-{uid}/items").status_code == 200
        assert client.get(f"/api/payouts/held-{uid}", headers={"Accept": "text/csv"}).status_code == 200
        for path in ("/api/payouts/never-seen", "/api/payouts/never-seen/items/x",
                     "/api/reports/daily?from=2026-12-01&to=2026-12-01", "/api/payouts"):
            response = client.get(path)
            assert response.status_code == 503, path
            assert response.mimetype == "application/problem+json"
            assert "Retry-After" not in response.headers  # only a 429 carries one (SPEC §9)
    finally:
        reader.close()


def test_openapi_documents_the_ledger_routes(client):
    document = client.get("/openapi.json").get_json()
    paths = document["paths"]

    daily = paths["/api/reports/daily"]["get"]
    assert {p["name"] for p in daily["parameters"]} == {"from", "to"}
    assert "DailyReport" in document["components"]["schemas"]
    story = paths["/api/payouts/{batch_id}/items/{external_id}"]["get"]
    assert story["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("ItemStories")
    assert "text/csv" in paths["/api/payouts/{batch_id}"]["get"]["responses"]["200"]["content"]
