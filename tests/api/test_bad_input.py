"""Every class of bad input answers its 4xx as problem+json and writes nothing (SPEC §3)."""

from __future__ import annotations

import json

import pytest


def good_item(n: int = 0) -> dict:
    return {"external_id": f"e{n}", "user_id": "u", "amount_cents": 100, "pix_key": "a@b.com"}


def snapshot(redis_client) -> tuple:
    """What a submission writes: batch keys, the batch indexes, and messages in the queue.

    The session worker may still be settling earlier tests' batches (claims, counters, the open
    set) and consuming their messages, so those can change meanwhile; batch keys and index
    entries appear only when a batch is accepted, and the queue can only shrink.
    """
    return (sorted(redis_client.scan_iter("payouts:batch:*")),
            sorted(redis_client.scan_iter("payouts:client:*")),
            redis_client.zcard("payouts:batches"), redis_client.llen("celery"))


def assert_nothing_written(before: tuple, after: tuple) -> None:
    assert after[:3] == before[:3]
    assert after[3] <= before[3]  # no message published (the worker may consume older ones)


@pytest.fixture
def unchanged(redis_client):
    before = snapshot(redis_client)
    yield
    assert_nothing_written(before, snapshot(redis_client))


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"]
    return body


def field_paths(body: dict) -> set[str]:
    return {e["field"] for e in body["errors"]}


@pytest.mark.usefixtures("unchanged")
class TestRefusedBatchesWriteNothing:
    def test_malformed_json_is_400(self, client):
        response = client.post("/api/payouts", data="{not json", content_type="application/json")
        assert_problem(response, 400)

    @pytest.mark.parametrize("body", ["[]", "42", '"batch"', "null"])
    def test_non_object_json_is_400(self, client, body):
        assert_problem(client.post("/api/payouts", data=body, content_type="application/json"), 400)

    def test_not_json_is_415(self, client):
        response = client.post("/api/payouts", data="batch_id=x", content_type="text/plain")
        assert_problem(response, 415)

    def test_body_too_large_is_413(self, app, client):
        app.config["MAX_CONTENT_LENGTH"] = 1024
        body = json.dumps({"batch_id": "big", "items": [good_item(i) for i in range(100)]})
        response = client.post("/api/payouts", data=body, content_type="application/json")
        assert_problem(response, 413)

    def test_missing_fields_name_their_paths(self, client):
        body = assert_problem(client.post("/api/payouts", json={"items": [{}]}), 422)
        assert {"batch_id", "items.0.external_id", "items.0.user_id", "items.0.amount_cents",
                "items.0.pix_key"} <= field_paths(body)

    @pytest.mark.parametrize("amount", [-1, 0, 1.5, 100.0, "100", True, None, [], {}])
    def test_amount_must_be_a_positive_integer(self, client, amount):
        items = [good_item(0), good_item(1), {**good_item(2), "amount_cents": amount}]
        body = assert_problem(client.post("/api/payouts", json={"batch_id": "b", "items": items}), 422)
        assert field_paths(body) == {"items.2.amount_cents"}

    def test_amount_above_cap_is_refused(self, client):
        items = [{**good_item(), "amount_cents": 1_500_000}]
        body = assert_problem(client.post("/api/payouts", json={"batch_id": "b", "items": items}), 422)
        assert field_paths(body) == {"items.0.amount_cents"}
        assert "1499999" in body["errors"][0]["message"]

    def test_wrong_types_everywhere(self, client):
        items = [{"external_id": 1, "user_id": None, "amount_cents": "x", "pix_key": ["k"]}]
        body = assert_problem(client.post("/api/payouts", json={"batch_id": 7, "items": items}), 422)
        assert field_paths(body) == {"batch_id", "items.0.external_id", "items.0.user_id",
                                     "items.0.amount_cents", "items.0.pix_key"}

    def test_unknown_fields_are_refused(self, client):
        items = [{**good_item(), "note": "x"}]
        payload = {"batch_id": "b", "items": items, "extra": 1}
        body = assert_problem(client.post("/api/payouts", json=payload), 422)
        assert field_paths(body) == {"extra", "items.0.note"}

    @pytest.mark.parametrize("items", [[], "abc", {"0": {}}, None])
    def test_items_must_be_a_non_empty_list(self, client, items):
        body = assert_problem(client.post("/api/payouts", json={"batch_id": "b", "items": items}), 422)
        assert field_paths(body) == {"items"}

    def test_too_many_items_is_refused(self, make_app):
        client = make_app(max_items=3).test_client()
        payload = {"batch_id": "b", "items": [good_item(i) for i in range(4)]}
        body = assert_problem(client.post("/api/payouts", json=payload), 422)
        assert field_paths(body) == {"items"}

    def test_empty_strings_are_refused(self, client):
        items = [{**good_item(), "external_id": "", "pix_key": ""}]
        body = assert_problem(client.post("/api/payouts", json={"batch_id": "", "items": items}), 422)
        assert field_paths(body) == {"batch_id", "items.0.external_id", "items.0.pix_key"}

    def test_field_errors_are_capped_for_huge_batches(self, client):
        items = [{**good_item(i), "amount_cents": -1} for i in range(500)]
        body = assert_problem(client.post("/api/payouts", json={"batch_id": "b", "items": items}), 422)
        assert len(body["errors"]) == 100
        assert "500" in body["detail"]

    def test_alias_path_validates_the_same_way(self, client):
        assert_problem(client.post("/payouts/batch", json={"batch_id": "b"}), 422)


def test_unknown_batch_is_404(client):
    assert_problem(client.get("/api/payouts/no-such-batch"), 404)


def test_unknown_route_and_wrong_method_are_problems(client):
    assert_problem(client.get("/api/nothing-here"), 404)
    assert_problem(client.delete("/api/payouts/x"), 405)


def test_redis_down_is_503_and_nothing_is_accepted(make_app, redis_client):
    from payouts_devstack.redis_server import free_port

    app = make_app(store_url=f"redis://127.0.0.1:{free_port()}/0")
    before = snapshot(redis_client)
    response = app.test_client().post("/api/payouts", json={"batch_id": "down", "items": [good_item()]})
    body = assert_problem(response, 503)
    assert "Retry-After" not in response.headers  # only a 429 carries one (SPEC §9)
    assert "nothing was accepted" in body["detail"]
    assert_problem(app.test_client().get("/api/payouts/down"), 503)
    assert_nothing_written(before, snapshot(redis_client))


def test_broker_failure_while_publishing_leaves_no_half_batch(client, redis_client, monkeypatch, uid):
    from kombu.exceptions import OperationalError

    import payouts_tasks.batches as batches

    def broken_publish(batch_id, total, lease):
        raise OperationalError("broker connection refused")

    monkeypatch.setattr(batches, "request_publishing", broken_publish)
    before = snapshot(redis_client)

    response = client.post("/api/payouts", json={"batch_id": f"half-{uid}", "items": [good_item()]})

    assert_problem(response, 503)
    assert_nothing_written(before, snapshot(redis_client))
    assert client.get(f"/api/payouts/half-{uid}").status_code == 404
