"""settle's timing rules (payouts_core/timing_rules.py): the inequalities and each wait, in numbers."""

from __future__ import annotations

import pytest

from payouts_core.timing_rules import Timing

# The defaults: SPI deadline 40 s, time limit 55 s, visibility 70 s, backoff 0.25..10 s,
# stall 120 s, waiting at most 900 s.
DEFAULTS = Timing(40.0, 55, 70, 0.25, 10.0, 120, 900)


def with_(**changes) -> Timing:
    return Timing(**{**DEFAULTS.__dict__, **changes})


def test_the_defaults_keep_every_inequality():
    assert DEFAULTS.problems() == []


@pytest.mark.parametrize(("changes", "names"), [
    ({"time_limit_s": 40}, ("PAYOUTS_SETTLE_TIME_LIMIT_S", "PIX_SIM_SETTLEMENT_TIMEOUT_S")),
    ({"visibility_s": 55}, ("PAYOUTS_SETTLE_TIME_LIMIT_S", "PAYOUTS_VISIBILITY_TIMEOUT_S")),
    ({"backoff_max_s": 12.5}, ("PAYOUTS_RETRY_BACKOFF_MAX_S x 1.2",)),  # 15 + 55 = 70
    ({"stall_after_s": 55}, ("PAYOUTS_STALL_AFTER_S",)),
])
def test_each_broken_inequality_is_named(changes, names):
    problems = with_(**changes).problems()
    assert len(problems) >= 1 and all(name in problems[0] for name in names)


@pytest.mark.parametrize(("elapsed_s", "delay_s", "in_task"), [
    (0.0, 2.0, True),  # 0 + 2 + 40 = 42 < 49.5 (90 % of 55)
    (0.0, 2.01, False),  # longer than a wait worth holding a worker for
    (7.4, 2.0, True),  # 49.4 < 49.5
    (7.5, 2.0, False),  # 49.5: a whole provider call might not end before the limit
])
def test_a_transient_error_is_waited_out_in_the_task_only_when_a_whole_call_still_fits(
        elapsed_s, delay_s, in_task):
    assert DEFAULTS.retry_in_task(elapsed_s, delay_s) is in_task


def test_backoff_doubles_with_jitter_up_to_its_ceiling():
    for _ in range(200):
        assert 0.25 <= DEFAULTS.backoff_s(1) <= 0.5
        assert 1.0 <= DEFAULTS.backoff_s(3) <= 2.0
        assert 5.0 <= DEFAULTS.backoff_s(10) <= 10.0


def test_waits_for_opening_and_for_unknown_outcomes():
    assert DEFAULTS.opening_wait_s() == 5.0
    assert with_(time_limit_s=4, provider_deadline_s=1.0).opening_wait_s() == 2.0
    for _ in range(200):
        assert 1.0 <= DEFAULTS.unknown_countdown_s(40.0, since_call_s=39.0) <= 1.2
        assert 10.0 <= DEFAULTS.unknown_countdown_s(40.0, since_call_s=0.0) <= 12.0
        assert 0.1 <= DEFAULTS.unknown_countdown_s(40.0, since_call_s=50.0) <= 0.12
        assert 0.16 <= Timing.waiting_countdown_s(0) <= 0.24
        assert 4.0 <= Timing.waiting_countdown_s(9) <= 6.0
