"""API keys, per-key rate limits, health endpoints and /metrics, through the real Flask app."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from payouts_core.settings import SettingsError
from tests.conftest import METRICS_TOKEN

KEY = "tests-key-0123456789"
ROTATED = "rotated-key-0123456789"
OTHER = "other-key-0123456789"


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("headers", [{}, bearer("wrong-key-0123456789"), {"Authorization": "Basic xyz"},
                                     {"X-API-Key": "nope"}, {"Authorization": "Bearer "}])
def test_missing_or_wrong_key_is_401_problem(client, headers):
    headers = headers or {"Authorization": ""}
    for response in (client.get("/api/payouts/x", headers=headers),
                     client.post("/api/payouts", json={}, headers=headers),
                     client.get("/metrics", headers=headers)):
        assert response.status_code == 401
        assert response.mimetype == "application/problem+json"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert KEY not in response.get_data(as_text=True)


@pytest.mark.parametrize("headers", [bearer(KEY), bearer(ROTATED), {"X-API-Key": KEY},
                                     {"x-api-key": ROTATED}])
def test_each_configured_key_works_in_either_header(client, headers):
    assert client.get("/api/payouts/unknown", headers=headers).status_code == 404


def test_batch_records_which_key_submitted_it(client, uid):
    item = {"external_id": f"who-{uid}", "user_id": "u", "amount_cents": 100, "pix_key": "a@b.com"}
    response = client.post("/api/payouts", json={"batch_id": f"who-{uid}", "items": [item]},
                           headers=bearer(ROTATED))
    assert response.status_code == 202
    assert response.get_json()["submitted_by"] == "tests"  # the client, whichever of its keys


def test_docs_and_health_need_no_key(client):
    for path in ("/docs/", "/openapi.json", "/healthz"):
        assert client.get(path, headers={"Authorization": ""}).status_code == 200


def test_app_refuses_to_start_without_keys(make_app):
    with pytest.raises(SettingsError, match="PAYOUTS_API_KEYS"):
        make_app(api_keys=())
    app = make_app(api_keys=(), auth_disabled=True)
    assert app.test_client().get("/api/payouts/x", headers={"Authorization": ""}).status_code == 404


def test_rate_limits_are_per_key(make_app, uid):
    app = make_app(ratelimit_enabled=True, ratelimit_read="4 per minute")  # a budget no other test uses
    client = app.test_client()
    path = f"/api/payouts/nope-{uid}"
    first = [client.get(path, headers=bearer(KEY)).status_code for _ in range(5)]
    other = [client.get(path, headers=bearer(OTHER)).status_code for _ in range(4)]
    rotated = client.get(path, headers=bearer(ROTATED))

    assert first == [404, 404, 404, 404, 429]
    assert other == [404, 404, 404, 404]  # the same address, another client: its own budget
    assert rotated.status_code == 429  # the same client's other key shares its budget
    limited = client.get(path, headers=bearer(KEY))
    assert int(limited.headers["Retry-After"]) > 0
    ok = client.get(path, headers=bearer(OTHER))
    assert ok.status_code == 429 and "RateLimit-Limit" in ok.headers


def test_request_id_is_returned_and_accepted(client):
    assert len(client.get("/healthz").headers["X-Request-ID"]) == 32
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    offered = "not an acceptable id " * 5
    assert client.get("/healthz", headers={"X-Request-ID": offered}).headers["X-Request-ID"] != offered


@pytest.mark.usefixtures("worker")
def test_readyz_sees_redis_broker_and_a_worker(client):
    response = client.get("/readyz")
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["status"] == "ready"
    assert "@" in body["checks"]["workers"]["first"]  # the hostname of the worker that answered
    assert {"redis", "broker", "workers", "ledger"} == set(body["checks"])


def test_readyz_is_503_when_redis_is_unreachable(make_app):
    from payouts_devstack.redis_server import free_port

    app = make_app(store_url=f"redis://127.0.0.1:{free_port()}/0")
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["redis"]["ok"] is False


@pytest.mark.usefixtures("worker")
def test_metrics_move_after_a_batch(client, uid):
    from tests.conftest import wait_for_report

    def sample(name: str, **labels) -> float:
        text = client.get("/metrics", headers=bearer(METRICS_TOKEN)).get_data(as_text=True)
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        return 0.0

    paid_before = sample("payouts_items_final", status="paid")
    accepted_before = sample("payouts_batches_accepted_total")
    items = [{"external_id": f"m{i}-{uid}", "user_id": "u", "amount_cents": 100, "pix_key": "a@b.com"}
             for i in range(3)]
    assert client.post("/api/payouts", json={"batch_id": f"m-{uid}", "items": items}).status_code == 202
    wait_for_report(client, f"m-{uid}")

    assert sample("payouts_items_final", status="paid") >= paid_before + 3
    assert sample("payouts_batches_accepted_total") == accepted_before + 1
    assert sample("payouts_http_requests_total", route="/api/payouts", method="POST", status="202") >= 1
    assert sample("payouts_queue_depth") >= 0
