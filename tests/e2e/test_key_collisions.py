"""Issue 10 #1: ids holding `:` (or anything else) cannot reach another batch's keys."""

from __future__ import annotations

import pytest

from payouts_core.reconcile import reconcile
from tests.conftest import wait_for_report

pytestmark = pytest.mark.usefixtures("worker")


def batch(batch_id: str, external_id: str) -> dict:
    return {"batch_id": batch_id, "items": [{"external_id": external_id, "user_id": "u",
                                             "amount_cents": 100, "pix_key": "a@b.com"}]}


@pytest.mark.parametrize("suffix", [":items", ":orders", ":publisher"])
def test_a_batch_named_after_another_batchs_keys_leaves_it_intact(client, store, provider, uid, suffix):
    x = f"X-{uid}"
    assert client.post("/api/payouts", json=batch(x, f"x-{uid}")).status_code == 202
    assert client.post("/api/payouts", json=batch(x + suffix, f"y-{uid}")).status_code == 202

    report = wait_for_report(client, x)
    assert report["details"][0]["external_id"] == f"x-{uid}" and report["total"] == 1
    assert client.post("/api/payouts", json=batch(x, f"x-{uid}")).status_code == 200  # replay
    assert wait_for_report(client, x + suffix)["successful"] == 1
    assert reconcile(store, provider, x, client="tests") == []
    assert reconcile(store, provider, x + suffix, client="tests") == []


def test_a_batch_named_after_keys_of_a_batch_not_yet_posted_does_not_break_it(client, uid):
    """Posted first, `X:items` used to make X's own submission answer 500 although X was paid."""
    x = f"Y-{uid}"
    assert client.post("/api/payouts", json=batch(x + ":items", f"a-{uid}")).status_code == 202

    response = client.post("/api/payouts", json=batch(x, f"b-{uid}"))

    assert response.status_code == 202
    assert wait_for_report(client, x)["successful"] == 1
