"""RabbitMQ restarts mid-batch: the API refuses while it is down, workers reconnect, quorum queues
keep every message; nothing is lost and nothing is paid twice.

The broker is a private `rabbitmq-server` node of the stack's own (stopping the machine's shared
broker would disturb everyone else using it).
"""

from __future__ import annotations

from tests.faults.stack import items


def test_rabbitmq_restart_mid_batch(make_stack):
    stack = make_stack("rabbitmq", private_node=True)
    stack.start_service()
    assert stack.post("restart", items("r", 600)).status_code == 202
    stack.wait_until("restart", 100)

    stack.rabbit_node.stop()
    refused = stack.post("during-outage", items("o", 2))
    stack.rabbit_node.start()

    assert refused.status_code == 503
    assert refused.headers["Content-Type"] == "application/problem+json"
    [report] = stack.assert_exactly_once(["restart"], timeout=180)
    assert report["successful"] == 600
    assert stack.report("during-outage") is None  # the refused batch left nothing behind
    assert stack.post("after-restart", items("a", 20)).status_code == 202
    stack.assert_exactly_once(["after-restart"])
