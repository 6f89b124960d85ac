"""Exactly once across any time span (SPEC §5, §10), end to end: real API, worker, archiver and
ledger. A batch that left Redis still makes its paid ids duplicates or reuses, and its failed
ids payable again under a new provider key."""

from __future__ import annotations

import threading

import pytest

from payouts_core.ledger.retention import ledger_holds
from payouts_core.rules import idempotency_key
from payouts_core.store import BatchRef, Order, batch_keys
from tests.conftest import wait_for, wait_for_report

pytestmark = pytest.mark.usefixtures("worker", "archiver")


def item(external_id: str, pix_key: str = "someone@example.com", amount: int = 1000) -> dict:
    return {"external_id": external_id, "user_id": "u-" + external_id, "amount_cents": amount,
            "pix_key": pix_key}


def settle_and_retire(client, store, ledger_url, batch_id: str, items: list[dict]) -> dict:
    assert client.post("/api/payouts", json={"batch_id": batch_id, "items": items}).status_code == 202
    report = wait_for_report(client, batch_id)
    ref = BatchRef("tests", batch_id)
    facts = store.retention_facts(ref)
    wait_for(lambda: ledger_holds(ledger_url, ref, facts), 30, f"{batch_id} in the ledger")
    assert store.retire(ref, facts["events"])
    assert not store.client.exists(batch_keys(ref)[0])
    return report


def test_ids_of_a_retired_batch_stay_settled_forever(client, store, provider, ledger_url, uid):
    old = settle_and_retire(client, store, ledger_url, f"old-{uid}",
                            [item(f"p-{uid}"), item(f"f-{uid}", "fail.ac03@pix.test")])
    assert [d["status"] for d in old["details"]] == ["paid", "failed"]

    # Other terms for the archived payment: refused at submission, nothing accepted.
    refused = client.post("/api/payouts", json={"batch_id": f"reuse-{uid}",
                                                "items": [item(f"p-{uid}", amount=5)]})
    assert refused.status_code == 422
    assert "an archived payment" in refused.get_data(as_text=True)

    # Same terms twice (two batches): duplicates naming the archived payment; the failed id is
    # paid this time, under a new claim generation.
    later = client.post("/api/payouts", json={"batch_id": f"new-{uid}", "items": [
        item(f"p-{uid}"), item(f"f-{uid}")]})
    again = client.post("/api/payouts", json={"batch_id": f"again-{uid}", "items": [item(f"p-{uid}")]})
    assert later.status_code == again.status_code == 202
    report = wait_for_report(client, f"new-{uid}")
    paid_before = old["details"][0]
    assert report["details"][0]["status"] == "duplicate"
    assert report["details"][0]["duplicate_of"] == {"batch_id": f"old-{uid}", "index": 0,
                                                    "e2e_id": paid_before["e2e_id"]}
    assert report["details"][1]["status"] == "paid"
    assert wait_for_report(client, f"again-{uid}")["details"][0]["status"] == "duplicate"

    transfers = [t for t in provider.transfers() if t.external_id in (f"p-{uid}", f"f-{uid}")]
    settled = sorted((t.external_id, t.idempotency_key) for t in transfers if t.status == "settled")
    assert settled == [(f"f-{uid}", idempotency_key("tests", f"f-{uid}", 2)),
                       (f"p-{uid}", idempotency_key("tests", f"p-{uid}", 1))]


def test_a_submission_racing_the_retirement_always_sees_the_claim(client, store, ledger_url, uid):
    """While the claims shrink, every submission check finds each id held, in one form or the
    other: never a moment with neither."""
    ids = [f"race-{uid}-{i}" for i in range(300)]
    settle_and_retire_started = threading.Event()
    report = None

    def submit_and_retire():
        nonlocal report
        settle_and_retire_started.set()
        report = settle_and_retire(client, store, ledger_url, f"race-{uid}", [item(e) for e in ids])

    reuse = [Order(i, e, "someone-else", 7, "x@y.com", "x***@y.com") for i, e in enumerate(ids)]
    retirer = threading.Thread(target=submit_and_retire)
    retirer.start()
    settle_and_retire_started.wait()
    # Completed, or already retired: the retirer may let go of the batch between two polls.
    wait_for(lambda: store.batch_state(BatchRef("tests", f"race-{uid}")) == "completed"
             or report is not None, 180, "completion")
    checks = 0
    while retirer.is_alive() or checks == 0:
        assert len(store.conflicting_claims("tests", reuse)) == len(ids)
        checks += 1
    retirer.join()
    assert report is not None and report["successful"] == len(ids)
    assert len(store.conflicting_claims("tests", reuse)) == len(ids)  # after: archived claims


def test_a_retired_batch_id_still_names_its_payload(client, store, ledger_url, uid):
    """Posted again after it left Redis: the same payload is a replay (200, the ledger's report,
    nothing enqueued), another payload a 409, for this client; another client's is its own."""
    items = [item(f"n-{uid}")]
    old = settle_and_retire(client, store, ledger_url, f"named-{uid}", items)

    replay = client.post("/api/payouts", json={"batch_id": f"named-{uid}", "items": items})
    other_payload = client.post("/api/payouts", json={"batch_id": f"named-{uid}",
                                                      "items": [item(f"other-{uid}")]})
    assert replay.status_code == 200
    assert replay.get_json()["details"] == old["details"]
    assert other_payload.status_code == 409
    assert not store.batch_exists(BatchRef("tests", f"named-{uid}"))  # nothing written again
    # Another client may use the same batch_id: its own namespace (a new batch, paid).
    theirs = client.post("/api/payouts", json={"batch_id": f"named-{uid}", "items": items},
                         headers={"Authorization": "Bearer other-key-0123456789"})
    assert theirs.status_code == 202
