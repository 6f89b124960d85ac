"""batch.completed end to end (issue 13): real API, worker, beat and Redis in subprocesses, a real
receiver on 127.0.0.1. The event survives a worker SIGKILLed mid-batch and a receiver that is
down when the batch completes: delivered once it is back, one delivery id, signature valid."""

from __future__ import annotations

import os
import signal

import requests
from standardwebhooks import Webhook

from payouts_devstack import Stack
from payouts_devstack.redis_server import free_port
from tests.conftest import API_KEY, wait_for
from tests.webhook_receiver import Receiver

AUTH = {"Authorization": f"Bearer {API_KEY}"}
ENV = {
    # Loopback delivery is for development and tests only (refused in production).
    "PAYOUTS_WEBHOOKS_ALLOW_HTTP": "true", "PAYOUTS_WEBHOOKS_ALLOW_PRIVATE": "true",
    "PAYOUTS_WEBHOOK_BACKOFF_BASE_S": "0.2", "PAYOUTS_WEBHOOK_BACKOFF_MAX_S": "1",
    "PAYOUTS_WEBHOOK_TIMEOUT_S": "2",
    # The fault suite's short redelivery, so the killed worker's messages come back in seconds.
    "PIX_SIM_LATENCY_MS": "20-80", "PAYOUTS_VISIBILITY_TIMEOUT_S": "10",
    "PAYOUTS_SETTLE_TIME_LIMIT_S": "5", "PIX_SIM_SETTLEMENT_TIMEOUT_S": "2",
    "PAYOUTS_STALL_AFTER_S": "6", "PAYOUTS_SWEEP_INTERVAL_S": "1",
    "PAYOUTS_RETRY_BACKOFF_MAX_S": "0.5", "PAYOUTS_WORKER_METRICS_PORT": "0",
}


def test_completion_event_survives_a_worker_kill_and_a_receiver_outage(tmp_path):
    port = free_port()  # the receiver's port: nothing listens there until later
    with Stack(tmp_path, {**os.environ, **ENV}) as stack:
        stack.start_redis()
        stack.start_api()
        stack.start_beat()
        worker = stack.start_worker(concurrency=50)
        api = stack.api_url
        hook = requests.post(f"{api}/api/webhooks", headers=AUTH, timeout=10, json={
            "url": f"http://127.0.0.1:{port}/hooks", "events": ["batch.completed"]}).json()
        items = [{"external_id": f"wh-{i}", "user_id": "u", "amount_cents": 100 + i,
                  "pix_key": "someone@example.com"} for i in range(300)]
        assert requests.post(f"{api}/api/payouts", headers=AUTH, timeout=30,
                             json={"batch_id": "wh", "items": items}).status_code == 202

        def report():
            return requests.get(f"{api}/api/payouts/wh", headers=AUTH, timeout=10).json()

        wait_for(lambda: report()["processed"] >= 60, 60, "20 % of the batch")
        worker.signal_group(signal.SIGKILL)
        worker.wait()
        stack.start_worker(concurrency=50)
        final = wait_for(lambda: (r := report())["status"] == "completed" and r, 120, "completion")

        def delivery():
            log = requests.get(f"{api}/api/webhooks/{hook['id']}/deliveries", headers=AUTH,
                               timeout=10).json()["deliveries"]
            return log[0] if log else None

        failing = wait_for(lambda: (d := delivery()) and d["attempts"] >= 1 and d, 30,
                           "a failed attempt while the receiver is down")
        assert failing["status"] != "delivered"
        receiver = Receiver().start(port)
        try:
            wait_for(lambda: (d := delivery()) and d["status"] == "delivered", 60, "the delivery")
        finally:
            receiver.stop()

    ids = {r.headers["webhook-id"] for r in receiver.received}
    assert ids == {failing["id"]}  # every attempt, before and after the outage, one delivery id
    [request] = receiver.received
    event = Webhook(hook["secret"]).verify(request.body, request.headers)
    assert event["type"] == "batch.completed" and event["data"]["batch_id"] == "wh"
    counts = {k: event["data"][k] for k in ("successful", "failed", "duplicates")}
    assert counts == {k: final[k] for k in counts} and final["successful"] == 300
