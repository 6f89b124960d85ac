"""History (GET /api/payouts) and a batch's items by status (GET /api/payouts/<id>/items), issue 13.

Each test is its own tenant (a fresh client name for the tests' key), so the listings hold
exactly the batches the test made.
"""

from __future__ import annotations

import time

import pytest

from payouts_core.settings import key_digest
from payouts_core.store import BatchRef, Order, fingerprint
from tests.conftest import API_KEY, OTHER_KEY

B = {"Authorization": f"Bearer {OTHER_KEY}"}


@pytest.fixture
def tenant(uid) -> str:
    return f"h{uid}"


@pytest.fixture
def client(make_app, tenant):
    """The tests' key names a fresh client; OTHER_KEY names another fresh one."""
    keys = ((tenant, key_digest(API_KEY)), (f"o{tenant}", key_digest(OTHER_KEY)))
    return make_app(api_keys=keys).test_client()


def finished_batch(store, client_name: str, batch_id: str) -> None:
    """A one-item batch, failed and completed: in the history, never work for a worker or sweeper."""
    ref = items_batch(store, client_name, batch_id, ["failed"])
    assert store.complete_batch(ref) == ("completed",)


def walk(client, query: str = "", limit: int = 100, between_pages=lambda: None) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        url = f"/api/payouts?limit={limit}{query}" + (f"&cursor={cursor}" if cursor else "")
        response = client.get(url)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        pages.append([b["batch_id"] for b in body["batches"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        between_pages()


def test_250_batches_walked_by_100_are_each_seen_once_while_new_ones_arrive(client, store, tenant):
    for i in range(250):
        finished_batch(store, tenant, f"b{i:03d}")
    arrivals = iter(range(1000))

    pages = walk(client, between_pages=lambda: [finished_batch(store, tenant, f"new{next(arrivals)}")
                                                for _ in range(7)])

    assert [len(p) for p in pages] == [100, 100, 50]
    seen = [b for page in pages for b in page]
    assert seen == [f"b{i:03d}" for i in reversed(range(250))]  # newest first, each once
    assert len(walk(client, limit=100)[0]) == 100 and sum(map(len, walk(client))) == 264


def test_history_lists_summaries_newest_first_and_filters_by_status(client, store, tenant):
    finished_batch(store, tenant, "done")
    time.sleep(0.005)
    payload = {"batch_id": "running", "items": [
        {"external_id": f"{tenant}-1", "user_id": "u", "amount_cents": 5, "pix_key": "a@b.com"}]}
    assert client.post("/api/payouts", json=payload).status_code == 202

    everything = client.get("/api/payouts").get_json()
    completed = client.get("/api/payouts?status=completed").get_json()

    assert [b["batch_id"] for b in everything["batches"]] == ["running", "done"]
    assert everything["next_cursor"] is None
    assert "details" not in everything["batches"][0] and everything["batches"][0]["total"] == 1
    assert [b["batch_id"] for b in completed["batches"]] == ["done"]
    assert client.get("/api/payouts?status=processing").get_json()["batches"][0]["batch_id"] == "running"


def test_history_filters_by_creation_time(client, store, tenant):
    finished_batch(store, tenant, "old")
    time.sleep(0.02)
    middle = store.summary(BatchRef(tenant, "old"))["created_at"]
    time.sleep(0.02)
    finished_batch(store, tenant, "new")

    after = client.get(f"/api/payouts?created_after={middle}").get_json()["batches"]
    before = client.get("/api/payouts", query_string={"created_before": "2999-01-01T00:00:00+03:00"})

    assert [b["batch_id"] for b in after] == ["new"]
    assert [b["batch_id"] for b in before.get_json()["batches"]] == ["new", "old"]
    assert client.get("/api/payouts?created_before=2000-01-01T00:00:00Z").get_json()["batches"] == []


@pytest.mark.parametrize(("query", "field"), [
    ("limit=0", "limit"), ("limit=101", "limit"), ("limit=x", "limit"), ("status=paid", "status"),
    ("cursor=nonsense", "cursor"), ("cursor=WzFd", "cursor"), ("created_after=yesterday", "created_after"),
    ("colour=blue", "colour"),
])
def test_bad_history_queries_are_422_with_the_field(client, query, field):
    response = client.get(f"/api/payouts?{query}")

    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert [e["field"] for e in response.get_json()["errors"]] == [field]


def test_another_clients_batches_are_never_listed(client, store, tenant):
    finished_batch(store, tenant, "mine")

    assert client.get("/api/payouts", headers=B).get_json() == {"batches": [], "next_cursor": None}
    assert client.get("/api/payouts/mine/items", headers=B).status_code == 404


def items_batch(store, tenant: str, batch_id: str, statuses: list[str]) -> BatchRef:
    """A batch whose items reached the given outcomes (through the store's own scripts)."""
    ref = BatchRef(tenant, batch_id)
    orders = [Order(i, f"{tenant}-{batch_id}-{i}", "u", 100 + i, "a@b.com", "a***@b.com")
              for i in range(len(statuses))]
    store.create_batch(ref, fingerprint({"b": batch_id}), orders, lease_token="t")
    store.open_batch(ref, "t")
    for i, status in enumerate(statuses):
        if status == "failed":
            store.record_failed(ref, i, "AC03", "invalid account")
        elif status == "paid":
            decision = store.begin_settlement(ref, i, 6)
            store.record_paid(ref, i, f"E{i:031d}", decision.claim_generation)
    return ref


def test_items_by_status_page_in_submission_order(client, store, tenant):
    items_batch(store, tenant, "mixed", ["failed", "paid", "failed", "pending", "failed"])

    first = client.get("/api/payouts/mixed/items?status=failed&limit=2").get_json()
    second = client.get(f"/api/payouts/mixed/items?status=failed&limit=2&cursor={first['next_cursor']}")
    everything = client.get("/api/payouts/mixed/items").get_json()

    assert [(i["index"], i["failure_code"]) for i in first["items"]] == [(0, "AC03"), (2, "AC03")]
    assert [i["index"] for i in second.get_json()["items"]] == [4]
    assert second.get_json()["next_cursor"] is None
    assert [i["status"] for i in everything["items"]] == ["failed", "paid", "failed", "pending", "failed"]
    assert client.get("/api/payouts/mixed/items?status=paid").get_json()["items"][0]["index"] == 1


@pytest.mark.parametrize(("url", "status", "field"), [
    ("/api/payouts/nope/items", 404, None),
    ("/api/payouts/mixed/items?status=lost", 422, "status"),
    ("/api/payouts/mixed/items?cursor=WyJ4Il0", 422, "cursor"),
    ("/api/payouts/bad%20id/items", 422, "batch_id"),
])
def test_bad_item_queries(client, store, tenant, url, status, field):
    items_batch(store, tenant, "mixed", ["failed"])

    response = client.get(url)

    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    if field:
        assert [e["field"] for e in response.get_json()["errors"]] == [field]
