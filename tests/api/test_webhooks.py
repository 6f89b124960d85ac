"""/api/webhooks on the real Flask app (issue 13): register (secret shown once), list, delete,
rotate, the delivery log and redelivery, validation as problem+json, tenancy. Each test is its
own pair of clients (the tests' key and OTHER_KEY name fresh ones)."""

from __future__ import annotations

import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from payouts_core.resources import store_client
from payouts_core.settings import get_settings, key_digest
from payouts_core.webhooks import MAX_ENDPOINTS, WebhookStore
from tests.conftest import API_KEY, OTHER_KEY

B = {"Authorization": f"Bearer {OTHER_KEY}"}


@pytest.fixture
def tenant(uid) -> str:
    return f"w{uid}"


@pytest.fixture
def make_client(make_app, tenant):
    def make(**changes):
        keys = ((tenant, key_digest(API_KEY)), (f"o{tenant}", key_digest(OTHER_KEY)))
        return make_app(api_keys=keys, **changes).test_client()
    return make


@pytest.fixture
def client(make_client):
    """Loopback http allowed, as in development (tests never send traffic elsewhere)."""
    return make_client(webhooks_allow_http=True, webhooks_allow_private=True)


def register(client, url="http://127.0.0.1:9/hook", **extra):
    return client.post("/api/webhooks", json={"url": url, **extra})


def test_register_shows_the_secret_once(client):
    response = register(client, description="main")

    assert response.status_code == 201
    created = response.get_json()
    assert created["secret"].startswith("whsec_") and created["events"] == ["batch.completed"]
    assert response.headers["Location"] == f"/api/webhooks/{created['id']}"
    listed = client.get("/api/webhooks").get_json()["webhooks"]
    assert [w["id"] for w in listed] == [created["id"]]
    assert "secret" not in listed[0]
    assert created["secret"] not in client.get(f"/api/webhooks/{created['id']}").text


def test_delete_removes_it(client):
    endpoint_id = register(client).get_json()["id"]

    assert client.delete(f"/api/webhooks/{endpoint_id}").status_code == 204
    assert client.get(f"/api/webhooks/{endpoint_id}").status_code == 404
    assert client.delete(f"/api/webhooks/{endpoint_id}").status_code == 404
    assert client.get("/api/webhooks").get_json() == {"webhooks": []}


def test_rotation_returns_a_new_secret_and_keeps_the_old_one_for_the_grace_period(client):
    created = register(client).get_json()

    rotated = client.post(f"/api/webhooks/{created['id']}/rotate-secret", json={"grace_period_s": 3600})
    default = client.post(f"/api/webhooks/{created['id']}/rotate-secret")

    assert rotated.status_code == 200 and default.status_code == 200
    assert len({created["secret"], rotated.get_json()["secret"], default.get_json()["secret"]}) == 3
    assert client.get(f"/api/webhooks/{created['id']}").get_json()["previous_secret_expires_at"]


@pytest.mark.parametrize("url", ["http://hooks.platform.example/", "https://127.0.0.1/hook",
                                 "https://10.0.0.8/hook", "https://169.254.169.254/latest/meta-data",
                                 "https://localhost/hook", "https://[::1]/hook",
                                 "https://user:secret@hooks.platform.example/", "not a url"])
def test_production_settings_refuse_unsafe_urls(make_client, url):
    client = make_client()  # the defaults: https only, no private addresses

    response = register(client, url)

    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert [e["field"] for e in response.get_json()["errors"]] == ["url"]


def test_a_public_https_url_is_accepted_without_any_lookup(make_client):
    assert register(make_client(), "https://hooks.platform.example/payouts").status_code == 201


@pytest.mark.parametrize(("body", "field"), [
    ({"url": "http://127.0.0.1/", "events": ["batch.exploded"]}, "events.0"),
    ({"url": "http://127.0.0.1/", "events": []}, "events"),
    ({"url": 5}, "url"), ({}, "url"), ({"url": "http://127.0.0.1/", "colour": 1}, "colour"),
])
def test_bad_registrations_name_the_field(client, body, field):
    response = client.post("/api/webhooks", json=body)

    assert response.status_code == 422
    assert field in [e["field"] for e in response.get_json()["errors"]]


def test_bad_bodies(client):
    assert client.post("/api/webhooks", data="{", content_type="application/json").status_code == 400
    assert client.post("/api/webhooks", data="url=x").status_code == 415
    assert client.post("/api/webhooks", json=[1]).status_code == 400


def test_endpoints_per_client_are_capped(client):
    for _ in range(MAX_ENDPOINTS):
        assert register(client).status_code == 201

    response = register(client)

    assert response.status_code == 422 and response.mimetype == "application/problem+json"


def test_another_client_never_sees_my_webhooks_or_deliveries(client, tenant):
    endpoint_id = register(client).get_json()["id"]
    _, [delivery_id] = WebhookStore(store_client()).emit(tenant, "batch.completed", f"batch:{tenant}",
                                                         {}, 60_000)

    assert client.get("/api/webhooks", headers=B).get_json() == {"webhooks": []}
    for method, path in [("get", ""), ("delete", ""), ("post", "/rotate-secret"), ("get", "/deliveries"),
                         ("post", f"/deliveries/{delivery_id}/redeliver")]:
        response = getattr(client, method)(f"/api/webhooks/{endpoint_id}{path}", headers=B)
        assert response.status_code == 404, (method, path)
        assert response.mimetype == "application/problem+json"
    [mine] = client.get(f"/api/webhooks/{endpoint_id}/deliveries").get_json()["deliveries"]
    assert mine["id"] == delivery_id


def test_the_delivery_log_pages_newest_first_and_redeliver_requeues(client, tenant):
    endpoint_id = register(client).get_json()["id"]
    hooks = WebhookStore(store_client())
    ids = [hooks.emit(tenant, "batch.completed", f"batch:{i}", {}, 60_000)[1][0] for i in range(3)]

    first = client.get(f"/api/webhooks/{endpoint_id}/deliveries?limit=2").get_json()
    second = client.get(f"/api/webhooks/{endpoint_id}/deliveries?limit=2&cursor={first['next_cursor']}")
    redelivered = client.post(f"/api/webhooks/{endpoint_id}/deliveries/{ids[0]}/redeliver")

    walked = [d["id"] for d in first["deliveries"] + second.get_json()["deliveries"]]
    assert sorted(walked) == sorted(ids)  # each once (one millisecond may hold them all)
    assert second.get_json()["next_cursor"] is None
    entry = first["deliveries"][0]
    assert (entry["status"], entry["attempts"], entry["last_status_code"]) == ("pending", 0, None)
    assert entry["next_attempt_at"]
    assert redelivered.status_code == 202 and redelivered.get_json()["status"] == "pending"
    assert client.post(f"/api/webhooks/{endpoint_id}/deliveries/msg_nope/redeliver").status_code == 404
    assert client.get(f"/api/webhooks/{endpoint_id}/deliveries?limit=0").status_code == 422


# Registration fuzzed under a client of its own: the endpoints it registers never receive events.
FUZZ_KEY = f"fuzz-{uuid.uuid4().hex}"
_fuzz_app = None


def _fuzz_schema():
    from dataclasses import replace

    from payouts_api import create_app
    global _fuzz_app
    _fuzz_app = create_app({"TESTING": True}, settings=replace(
        get_settings(), api_keys=((f"fz{uuid.uuid4().hex[:8]}", key_digest(FUZZ_KEY)),)))
    return schemathesis.openapi.from_wsgi("/openapi.json", _fuzz_app)


fuzz = _fuzz_schema()


@fuzz.include(path_regex="^/api/webhooks").parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_webhook_operations_match_the_openapi_document(case):
    response = case.call_and_validate(checks=[not_a_server_error, response_schema_conformance],
                                      headers={"Authorization": f"Bearer {FUZZ_KEY}"})
    assert response.status_code != 401


# --- issue 20 -----------------------------------------------------------------------------------

def test_answers_holding_a_secret_are_not_stored_by_caches(client):
    created = register(client)
    rotated = client.post(f"/api/webhooks/{created.get_json()['id']}/rotate-secret")

    assert created.headers["Cache-Control"] == rotated.headers["Cache-Control"] == "no-store"
    assert "Cache-Control" not in client.get("/api/webhooks").headers  # no secret there


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://hooks.platform.example/h", True), ("https://hooks.platform.example:443/h", True),
    ("https://hooks.platform.example:8443/h", False), ("https://hooks.platform.example:6379/h", False),
    ("https://[2002:a9fe:a9fe::]/h", False), ("https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/h", False),
])
def test_default_ports_and_tunnelled_addresses_at_registration(make_client, url, allowed):
    client = make_client(webhook_ports=())  # the production default: 443 only

    assert register(client, url).status_code == (201 if allowed else 422)


def test_a_configured_port_is_allowed(make_client):
    client = make_client(webhook_ports=(8443,))
    assert register(client, "https://hooks.platform.example:8443/h").status_code == 201
    assert register(client, "https://hooks.platform.example/h").status_code == 422
