"""The settle task's decisions, run in-process (`settle.run`) on the real store and simulated
provider: no worker, no broker. Retries surface as celery's Retry exception."""

from __future__ import annotations

import time

import pytest
from celery.exceptions import Retry

from payouts_core.store import BatchRef, Order, fingerprint
from payouts_tasks.settle import settle
from tests.claims import claim_of

CLIENT = "settle-tests"


def open_batch(store, batch_id: str, pix_key: str, external_id: str) -> BatchRef:
    ref = BatchRef(CLIENT, batch_id)
    store.create_batch(ref, fingerprint({"b": batch_id}),
                       [Order(0, external_id, "u", 100, pix_key, "x***")], lease_token="t")
    store.open_batch(ref, "t")
    return ref


def run_until_attempts_used_up(ref: BatchRef) -> None:
    """Short transient errors are retried inside the task; once the attempts are used up and
    the provider cannot say what happened, the task retries through the broker (Retry)."""
    with pytest.raises(Retry):
        settle.run(ref.client, ref.batch_id, 0)


def item(store, ref: BatchRef) -> dict:
    return store.report(ref)["details"][0]


def test_a_settled_call_is_paid(store, uid):
    ref = open_batch(store, f"ok-{uid}", "someone@example.com", f"ok-{uid}")

    assert settle.run(CLIENT, ref.batch_id, 0) == "paid"
    assert settle.run(CLIENT, ref.batch_id, 0) == "final"  # a redelivery changes nothing
    assert len(item(store, ref)["e2e_id"]) == 32


def test_a_rejection_fails_at_once_with_the_providers_code(store, uid):
    ref = open_batch(store, f"rej-{uid}", "fail.ac03@pix.test", f"rej-{uid}")

    assert settle.run(CLIENT, ref.batch_id, 0) == "failed"
    assert (item(store, ref)["failure_code"], item(store, ref)["attempts"]) == ("AC03", 1)


def test_short_transient_errors_are_retried_inside_the_task_with_the_same_claim(store, uid):
    ref = open_batch(store, f"tr-{uid}", "timeout.twice@pix.test", f"tr-{uid}")

    assert settle.run(CLIENT, ref.batch_id, 0) == "paid"  # two AB03 waited out in the task
    assert item(store, ref)["attempts"] == 3
    assert claim_of(store, CLIENT, f"tr-{uid}")["gen"] == "1"


def test_a_long_backoff_goes_back_to_the_broker(store, uid, monkeypatch):
    import payouts_core.timing_rules as timing_rules

    monkeypatch.setattr(timing_rules, "IN_TASK_RETRY_MAX_S", 0.0)
    sent, retry = {}, settle.retry
    monkeypatch.setattr(settle, "retry", lambda **options: sent.update(options) or retry(**options))
    ref = open_batch(store, f"br-{uid}", "timeout.twice@pix.test", f"br-{uid}")

    with pytest.raises(Retry):
        settle.run(CLIENT, ref.batch_id, 0)
    assert (item(store, ref)["status"], item(store, ref)["attempts"]) == ("processing", 1)
    assert sent["queue"] == f"payouts.retry.{CLIENT}"  # not behind the client's queued items


def test_no_answer_is_unknown_until_the_final_deadline_then_failed(store, provider, uid, monkeypatch):
    ref = open_batch(store, f"dl-{uid}", "timeout.always@pix.test", f"dl-{uid}")
    run_until_attempts_used_up(ref)

    with pytest.raises(Retry):  # the last call was a moment ago: the transfer may still appear
        settle.run(CLIENT, ref.batch_id, 0)
    assert item(store, ref)["status"] == "processing"
    assert claim_of(store, CLIENT, f"dl-{uid}")["state"] == "inflight"

    monkeypatch.setattr(type(provider), "final_deadline_s", property(lambda _self: 0.0))
    assert settle.run(CLIENT, ref.batch_id, 0) == "failed"
    assert "no transfer exists" in item(store, ref)["failure_reason"]
    assert claim_of(store, CLIENT, f"dl-{uid}")["state"] == "failed"


def test_a_transfer_that_settles_after_the_attempts_is_paid(store, provider, uid):
    ref = open_batch(store, f"late-{uid}", "settle.late@pix.test", f"late-{uid}")
    run_until_attempts_used_up(ref)
    with pytest.raises(Retry):  # pending at the provider: unknown, not failed
        settle.run(CLIENT, ref.batch_id, 0)

    time.sleep(provider.settlement_timeout_s / 2)
    assert settle.run(CLIENT, ref.batch_id, 0) == "paid"
    assert item(store, ref)["attempts"] == 6


def test_an_item_waits_while_another_batch_holds_its_external_id(store, uid):
    first = open_batch(store, f"w1-{uid}", "timeout.always@pix.test", f"w-{uid}")
    second = open_batch(store, f"w2-{uid}", "timeout.always@pix.test", f"w-{uid}")
    with pytest.raises(Retry):
        settle.run(CLIENT, first.batch_id, 0)

    with pytest.raises(Retry):
        settle.run(CLIENT, second.batch_id, 0)
    assert item(store, second)["status"] == "pending"


def test_other_terms_while_held_fail_as_reused_without_a_call(store, provider, uid):
    open_batch(store, f"r1-{uid}", "someone@example.com", f"r-{uid}")
    settle.run(CLIENT, f"r1-{uid}", 0)
    ref = open_batch(store, f"r2-{uid}", "someone.else@example.com", f"r-{uid}")

    assert settle.run(CLIENT, ref.batch_id, 0) == "reused"
    assert item(store, ref)["failure_code"] == "EXTERNAL_ID_REUSED"
    assert item(store, ref)["attempts"] == 0
