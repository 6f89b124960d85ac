"""batch.completed end to end (issue 13): real API, worker, beat and Redis in subprocesses, a real
receiver on 127.0.0.1. The event survives a worker SIGKILLed mid-batch and a receiver that is
down when the batch completes: delivered once it is back, one delivery id, signature valid."""

from __future__ import annotations

import os
import signal
import time

import requests
from standardwebhooks import Webhook

from payouts_devstack import Stack
from payouts_devstack.redis_server import free_port
from tests.conftest import API_KEY, OTHER_KEY, wait_for
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
        stack.start_webhook_worker()
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


def test_trickling_receivers_hold_neither_settlement_nor_another_clients_deliveries(tmp_path):
    """Issue 20. Client A's ten endpoints trickle one byte every 0.5 s; the webhook worker has 4
    greenlets and a cap of 2 attempts in flight per client. B's batches still settle (the
    settlement worker consumes no webhooks at all) and B's event is delivered while A's attempts
    keep being cut at their 2 s deadline and retried."""
    env = {**os.environ, **ENV, "PAYOUTS_WEBHOOK_CONCURRENCY": "4",
           "PAYOUTS_WEBHOOK_INFLIGHT_PER_CLIENT": "2", "PAYOUTS_WEBHOOK_BACKOFF_BASE_S": "0.2"}
    trickling = [Receiver(script=[("trickle", 0.5)]).start() for _ in range(10)]
    fast = Receiver().start()
    b_auth = {"Authorization": f"Bearer {OTHER_KEY}"}
    try:
        with Stack(tmp_path, env) as stack:
            stack.start_redis()
            stack.start_api()
            stack.start_beat()
            stack.start_worker(concurrency=50)
            api = stack.api_url

            def post(batch_id: str, headers: dict, n: int = 20) -> None:
                items = [{"external_id": f"{batch_id}-{i}", "user_id": "u", "amount_cents": 100,
                          "pix_key": "someone@example.com"} for i in range(n)]
                assert requests.post(f"{api}/api/payouts", headers=headers, timeout=30,
                                     json={"batch_id": batch_id, "items": items}).status_code == 202

            def completed(batch_id: str, headers: dict) -> bool:
                return requests.get(f"{api}/api/payouts/{batch_id}", headers=headers,
                                    timeout=10).json()["status"] == "completed"

            def deliveries(hook: dict, headers: dict) -> list[dict]:
                return requests.get(f"{api}/api/webhooks/{hook['id']}/deliveries", headers=headers,
                                    timeout=10).json()["deliveries"]

            a_hooks = [requests.post(f"{api}/api/webhooks", headers=AUTH, timeout=10,
                                     json={"url": r.url}).json() for r in trickling]
            b_hook = requests.post(f"{api}/api/webhooks", headers=b_auth, timeout=10,
                                   json={"url": fast.url}).json()
            post("a1", AUTH)
            wait_for(lambda: completed("a1", AUTH), 60, "A's batch")
            time.sleep(2)
            # No webhook worker yet: settlement workers never send a webhook.
            assert not any(r.received for r in trickling)
            stack.start_webhook_worker()
            wait_for(lambda: sum(bool(r.received) for r in trickling) >= 2, 30, "A's first attempts")

            post("b1", b_auth)
            wait_for(lambda: completed("b1", b_auth), 30, "B's batch beside A's trickling receivers")
            wait_for(lambda: (d := deliveries(b_hook, b_auth)) and d[0]["status"] == "delivered", 30,
                     "B's delivery")
            post("b2", b_auth)
            wait_for(lambda: completed("b2", b_auth), 30, "B's second batch")

            cut = wait_for(lambda: [d for h in a_hooks for d in deliveries(h, AUTH)
                                    if d["attempts"] >= 1] or None, 60, "A's attempts recorded")
            assert all(d["status"] == "pending" and "DeadlinePassed" in d["last_error"] for d in cut)
    finally:
        for receiver in (*trickling, fast):
            receiver.stop()
