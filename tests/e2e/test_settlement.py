"""End to end through the real Flask app, a real Celery worker and a real Redis (SPEC §3-§5)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import wait_for_report

pytestmark = pytest.mark.usefixtures("worker")

SEED = Path(__file__).resolve().parents[2] / "seeds" / "payouts_batch_example.json"


def item(external_id: str, pix_key: str = "someone@example.com", amount: int = 1000) -> dict:
    return {"external_id": external_id, "user_id": "u-" + external_id, "amount_cents": amount,
            "pix_key": pix_key}


def post(client, batch_id: str, items: list[dict]):
    return client.post("/api/payouts", json={"batch_id": batch_id, "items": items})


def transfers_for(provider, external_id: str) -> list:
    return [t for t in provider.transfers() if t.external_id == external_id]


def assert_counts_add_up(report: dict) -> None:
    statuses = [d["status"] for d in report["details"]]
    assert report["total"] == len(report["details"])
    assert report["successful"] == statuses.count("paid")
    assert report["failed"] == statuses.count("failed")
    assert report["duplicates"] == statuses.count("duplicate")
    assert report["processed"] == report["successful"] + report["failed"] + report["duplicates"]


def test_seed_example_end_to_end(client, provider, uid):
    payload = json.loads(SEED.read_text())
    payload["batch_id"] += "-" + uid
    for entry in payload["items"]:
        entry["external_id"] += "-" + uid

    response = client.post("/api/payouts", json=payload)

    assert response.status_code == 202
    assert response.headers["Location"] == f"/api/payouts/{payload['batch_id']}"
    accepted = response.get_json()
    assert accepted["status"] == "processing"
    assert [d["status"] for d in accepted["details"]] == ["pending", "pending"]
    assert accepted["processed"] == 0 and accepted["completed_at"] is None

    report = wait_for_report(client, payload["batch_id"])
    assert report["status"] == "completed" and report["completed_at"]
    assert (report["processed"], report["successful"], report["failed"], report["duplicates"]) \
        == (2, 2, 0, 0)
    assert_counts_add_up(report)
    for detail, sent in zip(report["details"], payload["items"], strict=True):
        assert detail["external_id"] == sent["external_id"]
        assert detail["amount_cents"] == sent["amount_cents"]
        assert len(detail["e2e_id"]) == 32 and detail["e2e_id"].startswith("E")
        assert detail["attempts"] == 1
        assert detail["pix_key"] != sent["pix_key"]  # masked in the report
        assert len(transfers_for(provider, sent["external_id"])) == 1


def test_live_progress_is_visible_while_an_item_retries(client, uid):
    # One item's key times out on every attempt, so it keeps the batch open for a while.
    items = [item(f"fast-{i}-{uid}") for i in range(5)]
    items.append(item(f"slow-{uid}", pix_key="timeout.always@pix.test"))
    assert post(client, f"live-{uid}", items).status_code == 202

    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        report = client.get(f"/api/payouts/live-{uid}").get_json()
        seen.append((report["status"], report["processed"]))
        if report["status"] == "completed":
            break
        time.sleep(0.02)

    assert ("processing", 5) in seen, seen  # the five fast items done, the slow one still going
    assert [p for _, p in seen] == sorted(p for _, p in seen)  # progress never goes backwards
    final = client.get(f"/api/payouts/live-{uid}").get_json()
    slow = final["details"][5]
    assert slow["status"] == "failed" and slow["failure_code"] == "AB03"
    # Unknown is not failed: failed only once the provider's final deadline has passed.
    assert "no transfer exists" in slow["failure_reason"]


def test_replay_returns_current_report_and_enqueues_nothing(client, monkeypatch, uid):
    import payouts_tasks.batches as batches

    published = []
    real_request = batches.request_publishing
    monkeypatch.setattr(batches, "request_publishing",
                        lambda *args: published.append(args) or real_request(*args))
    items = [item(f"r1-{uid}"), item(f"r2-{uid}")]
    assert post(client, f"replay-{uid}", items).status_code == 202
    first = wait_for_report(client, f"replay-{uid}")

    again = post(client, f"replay-{uid}", items)

    assert again.status_code == 200
    assert again.headers["Location"] == f"/api/payouts/replay-{uid}"
    assert again.get_json() == first
    assert len(published) == 1
    time.sleep(0.3)
    assert client.get(f"/api/payouts/replay-{uid}").get_json() == first


def test_same_batch_id_with_other_payload_is_a_conflict(client, uid):
    assert post(client, f"conflict-{uid}", [item(f"c1-{uid}")]).status_code == 202
    before = wait_for_report(client, f"conflict-{uid}")

    response = post(client, f"conflict-{uid}", [item(f"c1-{uid}", amount=999)])

    assert response.status_code == 409
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["status"] == 409
    assert client.get(f"/api/payouts/conflict-{uid}").get_json() == before


def test_in_batch_repeat_is_a_duplicate_of_the_earlier_item(client, provider, uid):
    ext = f"same-{uid}"
    response = post(client, f"inbatch-{uid}", [item(ext), item(f"other-{uid}"), item(ext), item(ext)])
    assert response.status_code == 202

    report = wait_for_report(client, f"inbatch-{uid}")

    assert [d["status"] for d in report["details"]] == ["paid", "paid", "duplicate", "duplicate"]
    paid_e2e = report["details"][0]["e2e_id"]
    for dup in report["details"][2:]:
        assert dup["duplicate_of"] == {"batch_id": f"inbatch-{uid}", "index": 0, "e2e_id": paid_e2e}
        assert dup["attempts"] == 0
    assert len(transfers_for(provider, ext)) == 1
    assert_counts_add_up(report)


def test_in_batch_repeat_after_a_failure_is_settled_itself(client, provider, uid):
    ext = f"retry-{uid}"
    post(client, f"inbatch-fail-{uid}", [item(ext, pix_key="fail.ac03@pix.test"),
                                         item(ext, pix_key="fail.ac03@pix.test")])

    report = wait_for_report(client, f"inbatch-fail-{uid}")

    first, second = report["details"]
    assert first["status"] == "failed" and first["failure_code"] == "AC03"
    assert "duplicate_of" not in first and "duplicate_of" not in second
    # No money moved for the first, so the second is not a duplicate: it made its own call.
    assert second["status"] == "failed" and second["attempts"] == 1
    assert [t.status for t in transfers_for(provider, ext)] == ["rejected", "rejected"]


def test_cross_batch_repeat_is_a_duplicate(client, provider, uid):
    ext = f"cross-{uid}"
    post(client, f"cross-a-{uid}", [item(ext)])
    first = wait_for_report(client, f"cross-a-{uid}")

    post(client, f"cross-b-{uid}", [item(ext)])
    second = wait_for_report(client, f"cross-b-{uid}")

    dup = second["details"][0]
    assert dup["status"] == "duplicate"
    assert dup["duplicate_of"] == {"batch_id": f"cross-a-{uid}", "index": 0,
                                   "e2e_id": first["details"][0]["e2e_id"]}
    assert len(transfers_for(provider, ext)) == 1


def test_in_flight_repeat_waits_and_pays_once(client, provider, uid):
    # The key times out twice before settling, so the first claim stays in flight for a while.
    ext = f"race-{uid}"
    batch_ids = [f"race-{n}-{uid}" for n in range(3)]
    for batch_id in batch_ids:
        assert post(client, batch_id, [item(ext, pix_key="timeout.twice@pix.test")]).status_code == 202

    reports = [wait_for_report(client, b) for b in batch_ids]

    statuses = sorted(r["details"][0]["status"] for r in reports)
    assert statuses == ["duplicate", "duplicate", "paid"]
    assert len(transfers_for(provider, ext)) == 1
    paid = next(r for r in reports if r["details"][0]["status"] == "paid")
    for report in reports:
        if report is not paid:
            assert report["details"][0]["duplicate_of"]["batch_id"] == paid["batch_id"]


def test_failed_external_id_can_be_paid_in_a_later_batch(client, provider, uid):
    ext = f"later-{uid}"
    post(client, f"later-a-{uid}", [item(ext, pix_key="fail.ac06@pix.test")])
    first = wait_for_report(client, f"later-a-{uid}")
    assert first["details"][0]["status"] == "failed"
    assert first["failed"] == 1 and first["duplicates"] == 0

    post(client, f"later-b-{uid}", [item(ext)])
    second = wait_for_report(client, f"later-b-{uid}")

    assert second["details"][0]["status"] == "paid"
    assert [t.status for t in transfers_for(provider, ext)] == ["rejected", "settled"]
    # The first report is not rewritten: its item stays failed, never "duplicate".
    assert client.get(f"/api/payouts/later-a-{uid}").get_json()["details"][0]["status"] == "failed"


def test_transient_errors_are_retried_then_paid(client, provider, uid):
    post(client, f"transient-{uid}", [item(f"t1-{uid}", pix_key="timeout.twice@pix.test"),
                                       item(f"t2-{uid}", pix_key="flaky.ab09@pix.test")])

    report = wait_for_report(client, f"transient-{uid}")

    assert [d["status"] for d in report["details"]] == ["paid", "paid"]
    assert [d["attempts"] for d in report["details"]] == [3, 2]
    assert len(transfers_for(provider, f"t1-{uid}")) == 1


def test_permanent_error_fails_at_once_with_its_code(client, uid):
    post(client, f"permanent-{uid}", [item(f"p1-{uid}", pix_key="fail.ac06@pix.test")])

    detail = wait_for_report(client, f"permanent-{uid}")["details"][0]

    assert detail["status"] == "failed"
    assert detail["failure_code"] == "AC06"
    assert detail["failure_reason"]
    assert detail["attempts"] == 1
    assert "e2e_id" not in detail


def test_money_moved_before_a_timeout_is_found_not_paid_again(client, provider, uid):
    post(client, f"moved-{uid}", [item(f"m1-{uid}", pix_key="settle.then.timeout@pix.test")])

    detail = wait_for_report(client, f"moved-{uid}")["details"][0]

    [transfer] = transfers_for(provider, f"m1-{uid}")
    assert detail["status"] == "paid"
    assert detail["e2e_id"] == transfer.e2e_id


def test_redelivered_settle_messages_move_money_once(client, provider, store, uid):
    from payouts_tasks.settle import settle

    batch_id = f"redeliver-{uid}"
    externals = [f"d{i}-{uid}" for i in range(20)]
    assert post(client, batch_id, [item(e) for e in externals]).status_code == 202
    # Deliver every settle message a second (and third) time, as a broker would after a crash.
    for i in range(len(externals)):
        settle.apply_async(("tests", batch_id, i), ignore_result=True)
        settle.apply_async(("tests", batch_id, i), ignore_result=True)

    report = wait_for_report(client, batch_id)
    time.sleep(1.0)  # let the extra deliveries finish too
    report = client.get(f"/api/payouts/{batch_id}").get_json()

    assert report["processed"] == report["successful"] == 20
    assert_counts_add_up(report)
    for ext in externals:
        assert len(transfers_for(provider, ext)) == 1


def test_five_hundred_items_complete(client, provider, uid):
    batch_id = f"big-{uid}"
    items = [item(f"b{i}-{uid}", amount=100 + i) for i in range(500)]
    assert post(client, batch_id, items).status_code == 202

    report = wait_for_report(client, batch_id, timeout=180)

    assert report["processed"] == report["successful"] == 500
    assert [d["external_id"] for d in report["details"]] == [i["external_id"] for i in items]
    assert_counts_add_up(report)
    settled = {t.external_id for t in provider.transfers() if t.external_id.endswith(uid)}
    assert len(settled) == 500


def test_batch_left_unopened_by_a_dead_publisher_is_published_by_a_replay(client, store, uid):
    from payouts_api.schemas import BatchRequestSchema
    from payouts_core.store import BatchRef, Order, fingerprint

    batch_id = f"orphaned-{uid}"
    items = [item(f"o{i}-{uid}") for i in range(3)]
    payload = BatchRequestSchema().load({"batch_id": batch_id, "items": items})  # as the API sees it
    orders = [Order(i, it["external_id"], it["user_id"], it["amount_cents"], it["pix_key"], "x",
                    it["pix_key_type"])
              for i, it in enumerate(payload["items"])]
    # What an API process that died between writing the batch and publishing its chord leaves.
    ref = BatchRef("tests", batch_id)
    assert store.create_batch(ref, fingerprint(payload), orders, publish_lease_s=1)[0]

    within_lease = post(client, batch_id, items)
    assert within_lease.status_code == 200
    assert store.batch_state(ref) == "accepting"  # the publisher may still be alive

    time.sleep(1.2)
    assert post(client, batch_id, items).status_code == 200

    report = wait_for_report(client, batch_id)
    assert report["successful"] == 3
