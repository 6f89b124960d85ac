"""The reference model on its own (no Redis): a few rules written out, and its lifecycle table."""

from __future__ import annotations

import pytest

from payouts_core.model import LIFECYCLE, BatchState, Settlement

A, P, C = BatchState.ACCEPTING, BatchState.PROCESSING, BatchState.COMPLETED


def item(external_id: str, amount: int, terms: str) -> dict:
    return {"external_id": external_id, "user_id": "u1", "amount_cents": amount,
            "pix_key": "a@b.com", "pix_key_masked": "a***@b.com", "terms": terms}


def opened(model: Settlement, batch_id: str, items: list[dict]) -> None:
    assert model.create_batch("acme", batch_id, items, lease="L")
    assert model.open_batch("acme", batch_id, "L")


def test_the_lifecycle_table_lists_exactly_these_moves():
    assert set(LIFECYCLE) == {(None, A), (A, A), (A, P), (A, None), (P, C), (C, None)}


def test_a_move_outside_the_table_is_refused():
    model = Settlement()
    opened(model, "b1", [item("x", 100, "t1")])
    with pytest.raises(AssertionError, match="not in LIFECYCLE"):
        model._move("acme", "b1", model.batches["acme", "b1"], None)  # processing -> gone


def test_the_same_id_twice_in_a_batch_pays_once_and_reports_where():
    model = Settlement()
    opened(model, "b1", [item("x", 100, "t1"), item("x", 100, "t1")])

    assert model.begin_settlement("acme", "b1", 1, 6, now_ms=5).waiting_on == "b1#0"
    first = model.begin_settlement("acme", "b1", 0, 6, now_ms=5)
    assert (first.action, first.claim_generation, first.attempts) == ("settle", 1, 1)
    assert model.record_paid("acme", "b1", 0, "E1", 1) == "paid"
    assert model.begin_settlement("acme", "b1", 1, 6, now_ms=6).action == "duplicate"

    assert model.batches["acme", "b1"].items[1]["duplicate_of"] == {"batch_id": "b1", "index": 0,
                                                                  "e2e_id": "E1"}
    assert model.batches["acme", "b1"].counters == {"processed": 2, "successful": 1, "failed": 0,
                                                    "duplicates": 1}


def test_other_terms_fail_as_reused_and_a_failed_id_is_claimed_again_with_a_new_generation():
    model = Settlement()
    opened(model, "b1", [item("x", 100, "t1")])
    model.begin_settlement("acme", "b1", 0, 6, now_ms=5)
    opened(model, "b2", [item("x", 250, "t2")])

    assert model.begin_settlement("acme", "b2", 0, 6, now_ms=6).action == "reused"
    assert model.batches["acme", "b2"].items[0]["failure_reason"] == (
        "external_id is already held by batch b1 item 0 with other terms (amount, PIX key or "
        "user_id); nothing was paid")
    assert model.record_failed("acme", "b1", 0, "AC03", "invalid account") == "failed"
    opened(model, "b3", [item("x", 250, "t2")])
    assert model.begin_settlement("acme", "b3", 0, 6, now_ms=7).claim_generation == 2
