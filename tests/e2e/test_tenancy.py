"""Clients are tenants (issue 9, SPEC §5, §9): two API keys of two clients, real HTTP app,
real worker, real Redis. Each attack of the issue is one test here."""

from __future__ import annotations

import time

import pytest

from payouts_core.reconcile import reconcile
from payouts_core.store import BatchRef
from tests.claims import claim_of
from tests.conftest import OTHER_KEY, ROTATED_KEY, wait_for_report

pytestmark = pytest.mark.usefixtures("worker")

A = {}  # the tests' own key: client `tests` (KeyedClient sends it by default)
B = {"Authorization": f"Bearer {OTHER_KEY}"}  # client `other`


def item(external_id: str, amount: int = 1000, pix_key: str = "someone@example.com",
         user_id: str = "u1") -> dict:
    return {"external_id": external_id, "user_id": user_id, "amount_cents": amount, "pix_key": pix_key}


def post(client, batch_id: str, items: list[dict], headers: dict = A):
    return client.post("/api/payouts", json={"batch_id": batch_id, "items": items}, headers=headers)


def wait_for(client, batch_id: str, headers: dict = A, timeout: float = 120) -> dict:
    if headers is A:
        return wait_for_report(client, batch_id, timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = client.get(f"/api/payouts/{batch_id}", headers=headers).get_json()
        if report["status"] == "completed":
            return report
        time.sleep(0.1)
    raise AssertionError(f"{batch_id} not completed: {report}")


def settled(provider, external_id: str) -> list:
    return [t for t in provider.transfers() if t.external_id == external_id and t.status == "settled"]


def clean(store, provider, client: str, *batch_ids: str) -> None:
    for batch_id in batch_ids:
        assert reconcile(store, provider, batch_id, client=client) == []


def test_another_clients_payment_never_makes_mine_a_duplicate(client, store, provider, uid):
    """Issue 9 #1: `other` pays u3-001 R$ 0,01 to itself first; `tests`' R$ 10.000 is still paid."""
    ext = f"u3-001-{uid}"
    assert post(client, f"squat-{uid}", [item(ext, 1, "attacker@evil.com")], B).status_code == 202
    wait_for(client, f"squat-{uid}", B)

    assert post(client, f"real-{uid}", [item(ext, 1_000_000, "123.456.789-09")]).status_code == 202
    report = wait_for(client, f"real-{uid}")

    [detail] = report["details"]
    assert detail["status"] == "paid" and "duplicate_of" not in detail
    assert f"squat-{uid}" not in str(report)
    assert sorted(t.amount_cents for t in settled(provider, ext)) == [1, 1_000_000]
    clean(store, provider, "tests", f"real-{uid}")
    clean(store, provider, "other", f"squat-{uid}")


@pytest.mark.parametrize("change", [{"amount_cents": 2000}, {"pix_key": "someone.else@example.com"},
                                    {"user_id": "u2"}])
def test_reusing_a_paid_external_id_with_other_terms_is_refused(client, provider, uid, change):
    """Issue 9 #2: not a silent duplicate: 422 naming the item, nothing accepted or paid."""
    ext = f"reuse-{uid}"
    assert post(client, f"first-{uid}", [item(ext)]).status_code == 202
    wait_for(client, f"first-{uid}")

    response = post(client, f"second-{uid}", [item(f"fresh-{uid}"), {**item(ext), **change}])

    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert [e["field"] for e in response.get_json()["errors"]] == ["items.1.external_id"]
    assert f"first-{uid}" in response.get_json()["errors"][0]["message"]
    assert client.get(f"/api/payouts/second-{uid}").status_code == 404
    assert len(settled(provider, ext)) == 1 and settled(provider, f"fresh-{uid}") == []


def test_same_terms_after_normalisation_stay_a_duplicate(client, store, provider, uid):
    ext = f"norm-{uid}"
    assert post(client, f"n1-{uid}", [item(ext, pix_key="A1@Example.com")]).status_code == 202
    first = wait_for(client, f"n1-{uid}")
    assert post(client, f"n2-{uid}", [item(ext, pix_key="a1@example.com")]).status_code == 202

    [detail] = wait_for(client, f"n2-{uid}")["details"]

    assert detail["status"] == "duplicate"
    assert detail["duplicate_of"] == {"batch_id": f"n1-{uid}", "index": 0,
                                      "e2e_id": first["details"][0]["e2e_id"]}
    clean(store, provider, "tests", f"n1-{uid}", f"n2-{uid}")


def test_one_external_id_twice_in_a_batch_with_other_terms_is_refused(client, uid):
    response = post(client, f"twice-{uid}", [item(f"t-{uid}"), item(f"t-{uid}", amount=5)])

    assert response.status_code == 422
    assert [e["field"] for e in response.get_json()["errors"]] == ["items.1.external_id"]
    assert client.get(f"/api/payouts/twice-{uid}").status_code == 404


def test_another_clients_batch_answers_like_an_unknown_one(client, uid):
    """Issue 9 #3: no read, no existence leak."""
    assert post(client, f"mine-{uid}", [item(f"m-{uid}")]).status_code == 202

    theirs = client.get(f"/api/payouts/mine-{uid}", headers=B)
    unknown = client.get(f"/api/payouts/mine-{uid}x", headers=B)

    assert theirs.status_code == unknown.status_code == 404
    assert theirs.get_json()["detail"].replace(f"mine-{uid}", "ID") \
        == unknown.get_json()["detail"].replace(f"mine-{uid}x", "ID")
    assert theirs.get_json()["title"] == unknown.get_json()["title"]
    assert set(dict(theirs.headers)) == set(dict(unknown.headers))  # same header names


def test_a_squatted_batch_id_does_not_block_its_owner(client, uid):
    """Issue 9 #4: `other` posts `tests`' predictable next batch id first."""
    batch_id = f"acme-2025-10-06-A-{uid}"
    assert post(client, batch_id, [item(f"x-{uid}", 1)], B).status_code == 202

    response = post(client, batch_id, [item(f"y-{uid}")])

    assert response.status_code == 202
    assert [d["external_id"] for d in response.get_json()["details"]] == [f"y-{uid}"]


def test_two_clients_with_the_same_batch_and_external_ids_are_both_paid(client, store, provider, uid):
    batch_id, items = f"same-{uid}", [item(f"s1-{uid}"), item(f"s2-{uid}")]
    assert post(client, batch_id, items).status_code == 202
    assert post(client, batch_id, items, B).status_code == 202  # not a replay: another client

    mine, theirs = wait_for(client, batch_id), wait_for(client, batch_id, B)

    assert mine["successful"] == theirs["successful"] == 2
    assert {d["e2e_id"] for d in mine["details"]}.isdisjoint(d["e2e_id"] for d in theirs["details"])
    assert len(settled(provider, f"s1-{uid}")) == 2
    clean(store, provider, "tests", batch_id)
    clean(store, provider, "other", batch_id)


def test_a_rotated_key_of_the_same_client_sees_the_same_batches(client, uid):
    assert post(client, f"rot-{uid}", [item(f"r-{uid}")]).status_code == 202
    rotated = {"Authorization": f"Bearer {ROTATED_KEY}"}

    assert client.get(f"/api/payouts/rot-{uid}", headers=rotated).status_code == 200
    assert post(client, f"rot-{uid}", [item(f"r-{uid}")], rotated).status_code == 200  # a replay


def test_unknown_outcome_keeps_the_claim_until_the_provider_settles(client, store, provider, uid):
    """Issue 9 #5: every call times out, the transfer settles after the attempts are used up.

    The item stays unsettled and its external_id held (a second batch waits) until a lookup
    finds the transfer settled: paid once, never failed and paid again.
    """
    ext = f"late-{uid}"
    late = item(ext, pix_key="settle.late@pix.test")
    assert post(client, f"late1-{uid}", [late]).status_code == 202
    deadline = time.monotonic() + 30
    while store.report(BatchRef("tests", f"late1-{uid}"))["details"][0]["attempts"] < 6:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # Attempts used up, the transfer still pending at the provider: not failed, claim held.
    assert store.report(BatchRef("tests", f"late1-{uid}"))["details"][0]["status"] == "processing"
    assert claim_of(store, "tests", ext)["state"] == "inflight"
    assert post(client, f"late2-{uid}", [late]).status_code == 202  # waits for the outcome

    [first] = wait_for(client, f"late1-{uid}")["details"]
    [second] = wait_for(client, f"late2-{uid}")["details"]

    assert first["status"] == "paid" and first["attempts"] == 6
    assert second["status"] == "duplicate" and second["duplicate_of"]["e2e_id"] == first["e2e_id"]
    [transfer] = settled(provider, ext)
    assert transfer.e2e_id == first["e2e_id"]
    assert post(client, f"late3-{uid}", [late]).status_code == 202
    assert wait_for(client, f"late3-{uid}")["details"][0]["status"] == "duplicate"
    clean(store, provider, "tests", f"late1-{uid}", f"late2-{uid}", f"late3-{uid}")
