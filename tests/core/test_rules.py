"""The money rules that are pure functions (payouts_core/rules.py)."""

from __future__ import annotations

import pytest

from payouts_core.provider import Transfer
from payouts_core.rules import (
    FINAL_STATUSES,
    ItemStatus,
    Verdict,
    counters_from_statuses,
    idempotency_key,
    lookup_verdict,
    payout_terms,
    reuse_reason,
    same_terms,
)
from payouts_core.scripts import lua_constants
from payouts_core.store import LUA_CONSTANTS


def transfer(status: str) -> Transfer:
    return Transfer("k", "e", status, 100, "a***@b.com", "2026-01-01T00:00:00.000Z")


@pytest.mark.parametrize(("found", "since_call_s", "verdict"), [
    (transfer("settled"), 0, Verdict.PAID),
    (transfer("settled"), 999, Verdict.PAID),
    (transfer("rejected"), 0, Verdict.FAILED),
    (None, 39.9, Verdict.UNKNOWN),  # no transfer yet: the call may still land
    (None, 40.0, Verdict.FAILED),  # past the provider's final deadline: none can appear
    (transfer("pending"), 0, Verdict.UNKNOWN),
    (transfer("pending"), 999, Verdict.UNKNOWN),  # the provider knows it: keep asking
])
def test_unknown_is_not_failed(found, since_call_s, verdict):
    assert lookup_verdict(found, since_call_s, final_deadline_s=40.0) == verdict


def test_one_status_to_counter_map_feeds_reports_and_lua():
    assert {ItemStatus.PAID, ItemStatus.FAILED, ItemStatus.DUPLICATE} == FINAL_STATUSES
    assert counters_from_statuses(["paid", "paid", "failed", "duplicate", "processing"]) == {
        "successful": 2, "failed": 1, "duplicates": 1, "processed": 4}
    prelude = lua_constants(LUA_CONSTANTS)
    assert 'local COUNTER = {["paid"] = "successful", ["failed"] = "failed", ' \
           '["duplicate"] = "duplicates"}\n' in prelude
    assert 'local FINAL = {["duplicate"] = true, ["failed"] = true, ["paid"] = true}\n' in prelude


def test_terms_are_the_amount_the_normalised_key_and_the_user():
    same = payout_terms(100, "a1@example.com", "u1")
    assert payout_terms(100, "a1@example.com", "u1") == same
    assert {payout_terms(101, "a1@example.com", "u1"), payout_terms(100, "b@example.com", "u1"),
            payout_terms(100, "a1@example.com", "u2")}.isdisjoint({same})


def test_a_new_claim_generation_is_a_new_provider_key_written_out():
    """The key a redelivery reuses and the one a re-claim after a failure gets, spelled out."""
    assert idempotency_key("acme", "x:1", 1) == "payout:acme:x%3A1:1"
    assert idempotency_key("acme", "x:1", 2) == "payout:acme:x%3A1:2"
    assert idempotency_key("a:b", "x", 1) == "payout:a%3Ab:x:1"


def test_same_terms_is_equality_or_an_archived_tag():
    full = "43d797c2c4c283c869d4372929d95be1"
    assert same_terms(full, full)
    assert same_terms("43d797c2c4c283c8", full)  # an archived claim's tag: the first 16 digits
    assert not same_terms("43d797c2c4c283c9", full)
    assert not same_terms("53d797c2c4c283c869d4372929d95be1", full)


def test_the_reuse_reason_names_where_the_id_is_held():
    assert reuse_reason("batch b1 item 3") == (
        "EXTERNAL_ID_REUSED", "external_id is already held by batch b1 item 3 with other terms "
        "(amount, PIX key or user_id); nothing was paid")
