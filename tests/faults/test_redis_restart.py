"""Redis restarts mid-batch: the API answers 503 while it is down, the batch still completes."""

from __future__ import annotations

import requests

from tests.faults.stack import BROKERS, items


@BROKERS
def test_redis_restart_mid_batch(make_stack, broker):
    """On RabbitMQ, Redis is still the result backend, store and limiter: the same outage."""
    stack = make_stack(broker)
    stack.start_service()
    assert stack.post("restart", items("r", 600)).status_code == 202
    stack.wait_until("restart", 100)

    stack.stop_redis()
    refused = stack.post("during-outage", items("o", 2))
    status = requests.get(f"{stack.api_url}/api/payouts/restart", timeout=30, headers=stack.auth)
    stack.start_redis_again()

    assert refused.status_code == 503
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert status.status_code == 503
    [report] = stack.assert_exactly_once(["restart"], timeout=180)
    assert report["successful"] == 600
    assert stack.report("during-outage") is None  # the refused batch left nothing behind
