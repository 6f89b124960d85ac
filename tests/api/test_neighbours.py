"""Issue 20 through the real Flask app and the session Redis: what one client, one address or
one proxy can no longer do to the others (lockouts, read budgets, scans, metrics, value caps)."""

from __future__ import annotations

import uuid
from dataclasses import replace

import pytest

from payouts_api import create_app
from payouts_api.payouts import ITEMS_SCAN_MAX
from payouts_core.settings import get_settings, key_digest
from payouts_core.store import encode_cursor
from tests.api.test_history import items_batch
from tests.conftest import API_KEY, METRICS_TOKEN, OTHER_KEY, FixedRemoteAddr, KeyedClient

A = {"Authorization": f"Bearer {API_KEY}"}
B = {"Authorization": f"Bearer {OTHER_KEY}"}
WRONG = {"Authorization": "Bearer wrong-key-0123456789"}
PROXY = "10.9.9.9"


def behind(address: str, **changes):
    """A client whose requests arrive from `address` (e.g. a reverse proxy), rate limiting on."""
    app = create_app({"TESTING": True},
                     settings=replace(get_settings(), ratelimit_enabled=True, **changes))
    app.test_client_class = KeyedClient
    app.wsgi_app = FixedRemoteAddr(app.wsgi_app, address)
    return app.test_client()


def fresh_address() -> str:
    return "10." + ".".join(str(b) for b in uuid.uuid4().bytes[:3])


def forwarded(address: str) -> dict:
    """An anonymous request (no key: it spends the address budget) forwarded for `address`."""
    return {"X-Forwarded-For": address, "Authorization": ""}


# --- one address or proxy cannot lock out valid keys ------------------------------------------

def test_a_guesser_behind_the_shared_proxy_cannot_lock_out_valid_keys():
    """Without trusted hops every request has the proxy's address: the guesser spends that
    budget, but requests with valid keys (either client) are neither counted nor refused."""
    client = behind(fresh_address(), ratelimit_unauthenticated="3 per minute")

    guesses = [client.get("/api/payouts/nope", headers=WRONG).status_code for _ in range(6)]

    assert guesses == [401, 401, 401, 429, 429, 429]
    assert client.get("/api/payouts/nope", headers=A).status_code == 404
    assert client.get("/api/payouts/nope", headers=B).status_code == 404
    assert client.get("/api/payouts/nope", headers=WRONG).status_code == 429


def test_trusted_proxy_hops_give_each_client_address_its_own_budget():
    proxy = fresh_address()
    client = behind(proxy, ratelimit_unauthenticated="2 per minute", trusted_proxy_hops=1)
    guesser, neighbour = fresh_address(), fresh_address()

    spent = [client.get("/openapi.json", headers=forwarded(guesser)).status_code for _ in range(3)]
    # Forged entries to the left of the proxy's own do not move the guesser elsewhere.
    forged = client.get("/openapi.json", headers=forwarded(f"{neighbour}, {guesser}"))

    assert spent == [200, 200, 429] and forged.status_code == 429
    assert client.get("/openapi.json", headers=forwarded(neighbour)).status_code == 200


def test_without_trusted_hops_x_forwarded_for_is_ignored():
    """A client cannot escape its budget by sending X-Forwarded-For itself."""
    client = behind(fresh_address(), ratelimit_unauthenticated="2 per minute")

    statuses = [client.get("/openapi.json", headers=forwarded(fresh_address())).status_code
                for _ in range(3)]

    assert statuses == [200, 200, 429]


@pytest.mark.usefixtures("worker")
def test_readyz_probes_do_not_spend_the_address_budget():
    client = behind(fresh_address(), ratelimit_unauthenticated="2 per minute")

    assert {client.get("/readyz", headers={"Authorization": ""}).status_code for _ in range(10)} == {200}
    assert [client.get("/api/payouts/x", headers=WRONG).status_code for _ in range(3)] == [401, 401, 429]


# --- one read budget per client -----------------------------------------------------------------

def test_one_read_budget_per_client_across_routes(store, uid):
    tenant = f"r{uid}"
    keys = ((tenant, key_digest(API_KEY)), (f"o{tenant}", key_digest(OTHER_KEY)))
    client = behind(fresh_address(), ratelimit_read="4 per minute", api_keys=keys)
    items_batch(store, tenant, "b", ["failed"])
    routes = ["/api/payouts/b", "/api/payouts", "/api/payouts/b/items", "/api/webhooks",
              "/api/payouts/b/items?status=failed"]

    statuses = [client.get(path).status_code for path in routes]

    assert statuses == [200, 200, 200, 200, 429]
    assert [client.get(path, headers=B).status_code for path in routes[1:]] == [200, 404, 200, 404]


# --- the items view scans a bounded number of items ---------------------------------------------

def test_a_filter_matching_nothing_examines_at_most_the_scan_cap_per_page(client, store, uid):
    total = 2 * ITEMS_SCAN_MAX + 500
    items_batch(store, "tests", f"scan-{uid}", ["pending"] * total)
    pages, cursor = [], None
    while True:
        query = "?status=duplicate&limit=10" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/api/payouts/scan-{uid}/items{query}").get_json()
        pages.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert pages == [[], [], []]  # 1,000 + 1,000 + 500 examined, one page each


def test_a_scan_stops_early_when_the_page_is_full(client, store, uid):
    items_batch(store, "tests", f"full-{uid}", ["pending"] * (ITEMS_SCAN_MAX + 10))

    page = client.get(f"/api/payouts/full-{uid}/items?status=pending&limit=3").get_json()

    assert [i["index"] for i in page["items"]] == [0, 1, 2]
    follow = client.get(f"/api/payouts/full-{uid}/items?status=pending&limit=100"
                        f"&cursor={page['next_cursor']}")
    assert [i["index"] for i in follow.get_json()["items"]][:2] == [3, 4]


@pytest.mark.parametrize("position", [-1, -10_000])
def test_a_negative_items_cursor_is_422(client, store, uid, position):
    items_batch(store, "tests", f"neg-{uid}", ["failed"])

    response = client.get(f"/api/payouts/neg-{uid}/items?cursor={encode_cursor(position)}")

    assert response.status_code == 422
    assert [e["field"] for e in response.get_json()["errors"]] == ["cursor"]


# --- /metrics answers the operator only ----------------------------------------------------------

def test_metrics_need_the_operator_token_not_a_client_key(client):
    for headers in (A, B, WRONG, {"Authorization": ""}):
        refused = client.get("/metrics", headers=headers)
        assert refused.status_code == 401 and refused.mimetype == "application/problem+json"

    scrape = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert scrape.status_code == 200 and "payouts_queue_depth" in scrape.get_data(as_text=True)


def test_without_a_configured_token_metrics_answer_nobody(make_app):
    client = make_app(metrics_token_digest="").test_client()
    for headers in (A, {"Authorization": f"Bearer {METRICS_TOKEN}"}, {"Authorization": "Bearer "}):
        assert client.get("/metrics", headers=headers).status_code == 401


def test_the_operator_token_is_not_a_client_key(client):
    operator = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    assert client.get("/api/payouts/x", headers=operator).status_code == 401


# --- value caps per batch and per client per day ------------------------------------------------

def batch(batch_id: str, *amounts: int) -> dict:
    return {"batch_id": batch_id, "items": [
        {"external_id": f"{batch_id}-{i}", "user_id": "u", "amount_cents": a, "pix_key": "a@b.com"}
        for i, a in enumerate(amounts)]}


def test_a_batch_above_the_batch_value_cap_is_422_and_leaves_nothing(make_app, uid):
    client = make_app(max_batch_amount_cents=1_000).test_client()

    refused = client.post("/api/payouts", json=batch(f"v-{uid}", 600, 401))

    assert refused.status_code == 422
    assert refused.get_json()["errors"][0]["field"] == "items"
    assert "1001" in refused.get_json()["errors"][0]["message"]
    assert client.get(f"/api/payouts/v-{uid}").status_code == 404


def test_the_daily_value_cap_is_per_client_and_a_replay_counts_once(make_app, uid):
    tenant = f"d{uid}"
    keys = ((tenant, key_digest(API_KEY)), (f"o{tenant}", key_digest(OTHER_KEY)))
    client = make_app(max_daily_amount_cents=1_000, api_keys=keys).test_client()

    first = client.post("/api/payouts", json=batch(f"a-{uid}", 700))
    replay = client.post("/api/payouts", json=batch(f"a-{uid}", 700))
    over = client.post("/api/payouts", json=batch(f"b-{uid}", 301))
    fits = client.post("/api/payouts", json=batch(f"c-{uid}", 300))
    other = client.post("/api/payouts", json=batch(f"b-{uid}", 301), headers=B)

    assert [r.status_code for r in (first, replay, over, fits, other)] == [202, 200, 422, 202, 202]
    assert "700 were accepted today" in over.get_json()["errors"][0]["message"]
    assert client.post("/api/payouts", json=batch(f"e-{uid}", 1)).status_code == 422


def test_a_conflicting_batch_does_not_spend_the_daily_cap(make_app, uid):
    tenant = f"x{uid}"
    client = make_app(max_daily_amount_cents=1_000,
                      api_keys=((tenant, key_digest(API_KEY)),)).test_client()
    assert client.post("/api/payouts", json=batch(f"a-{uid}", 500)).status_code == 202

    conflict = client.post("/api/payouts", json=batch(f"a-{uid}", 499))  # same id, other payload

    assert conflict.status_code == 409
    assert client.post("/api/payouts", json=batch(f"b-{uid}", 500)).status_code == 202
