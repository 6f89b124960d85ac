"""Interactive docs from the marshmallow schemas, and the two-tier rate limits."""

from __future__ import annotations

import pytest

from tests.conftest import FixedRemoteAddr


def test_openapi_document_is_built_from_the_request_schemas(client):
    document = client.get("/openapi.json").get_json()

    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {"/api/payouts", "/payouts/batch", "/api/payouts/{batch_id}",
                                      "/api/payouts/{batch_id}/items", "/api/webhooks",
                                      "/api/payouts/{batch_id}/items/{external_id}",
                                      "/api/reports/daily",
                                      "/api/webhooks/{endpoint_id}",
                                      "/api/webhooks/{endpoint_id}/rotate-secret",
                                      "/api/webhooks/{endpoint_id}/deliveries",
                                      "/api/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver"}
    item = document["components"]["schemas"]["PayoutItem"]
    assert set(item["required"]) == {"external_id", "user_id", "amount_cents", "pix_key"}
    assert item["properties"]["amount_cents"]["maximum"] == 1_499_999
    assert item["additionalProperties"] is False
    assert document["components"]["schemas"]["BatchRequest"]["properties"]["items"]["maxItems"] == 10_000
    post = document["paths"]["/api/payouts"]["post"]
    assert {"200", "202", "400", "401", "409", "413", "415", "422", "429", "503"} <= set(post["responses"])
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert document["security"] == [{"bearer": []}, {"apiKey": []}]


def test_docs_page_is_served(client):
    response = client.get("/docs/")
    assert response.status_code == 200
    assert "swagger" in response.get_data(as_text=True).lower()


@pytest.fixture
def limited_app(make_app, uid):
    app = make_app(ratelimit_enabled=True, ratelimit_write="3 per 10 seconds;5 per minute",
                   ratelimit_read="6 per 10 seconds")
    # A fresh client address per test so counters from other tests never interfere.
    address = "10." + ".".join(str(int(uid[i:i + 2], 16)) for i in (0, 2, 4))
    app.wsgi_app = FixedRemoteAddr(app.wsgi_app, address)
    return app




def test_write_tier_answers_429_with_retry_after(limited_app):
    client = limited_app.test_client()
    statuses = [client.post("/api/payouts", json={}).status_code for _ in range(4)]

    assert statuses == [422, 422, 422, 429]
    response = client.post("/api/payouts", json={})
    assert response.status_code == 429
    assert response.mimetype == "application/problem+json"
    assert int(response.headers["Retry-After"]) > 0


def test_read_path_has_its_own_budget(limited_app):
    client = limited_app.test_client()
    for _ in range(3):
        client.post("/api/payouts", json={})
    assert client.post("/api/payouts", json={}).status_code == 429

    reads = [client.get("/api/payouts/unknown").status_code for _ in range(7)]
    assert reads == [404] * 6 + [429]
