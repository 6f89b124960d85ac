"""The provider misbehaves: lost answers, stuck settlements, hung calls."""

from __future__ import annotations

from tests.faults.stack import items


def test_timeout_after_the_money_moved_is_found_not_repaid(make_stack):
    stack = make_stack()
    stack.start_service()
    batch = items("moved", 10, pix_key="settle.then.timeout@pix.test") + items("plain", 10)
    assert stack.post("lost-answers", batch).status_code == 202

    [report] = stack.assert_exactly_once(["lost-answers"])

    ledger = {t.external_id: t for t in stack.provider.transfers()}
    for detail in report["details"]:
        assert detail["status"] == "paid"
        assert detail["e2e_id"] == ledger[detail["external_id"]].e2e_id
    assert all(d["attempts"] == 2 for d in report["details"][:10])


def test_stuck_settlement_fails_cleanly_at_the_deadline(make_stack):
    stack = make_stack(PIX_SIM_SETTLEMENT_TIMEOUT_S="0.5", PAYOUTS_SETTLE_MAX_ATTEMPTS="2")
    stack.start_service()
    batch = items("fine", 5) + items("stuck", 3, pix_key="slow.stuck@pix.test")
    assert stack.post("stuck", batch).status_code == 202

    [report] = stack.assert_exactly_once(["stuck"])

    assert report["successful"] == 5 and report["failed"] == 3
    for detail in report["details"][5:]:
        assert detail["failure_code"] == "AB03"
        assert detail["attempts"] == 2


def test_hung_call_is_ended_by_the_time_limit_and_the_batch_completes(make_stack):
    stack = make_stack(PAYOUTS_SETTLE_TIME_LIMIT_S="2", PIX_SIM_SETTLEMENT_TIMEOUT_S="1",
                       PAYOUTS_SETTLE_MAX_ATTEMPTS="2", PAYOUTS_STALL_AFTER_S="3")
    stack.start_service()
    batch = items("fine", 5) + items("hung", 2, pix_key="hang@pix.test")
    assert stack.post("hung", batch).status_code == 202

    # Each hung attempt is killed by the time limit, which fails the chord; the sweeper
    # re-drives the items until their attempts are used up, then completes the batch.
    [report] = stack.assert_exactly_once(["hung"], timeout=180)

    assert report["successful"] == 5 and report["failed"] == 2
    for detail in report["details"][5:]:
        assert detail["failure_code"] == "AB03"
        assert "no provider answer" in detail["failure_reason"]
