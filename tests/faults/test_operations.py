"""Operations with real processes: graceful SIGTERM, JSON logs, the worker's metrics exporter,
reconciliation while a batch settles."""

from __future__ import annotations

import json
import signal
import threading
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from payouts_core.reconcile import LedgerCheck, reconcile
from payouts_devstack.redis_server import free_port
from tests.faults.stack import BROKERS, items


@BROKERS
def test_sigterm_to_a_worker_mid_batch_loses_nothing_and_pays_nothing_twice(make_stack, broker):
    stack = make_stack(broker)
    worker = stack.start_service()
    assert stack.post("term", items("t", 800)).status_code == 202
    stack.wait_until("term", 200)

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0  # warm shutdown: in-flight settles finished
    assert stack.report("term")["status"] == "processing"
    stack.start_worker()

    [report] = stack.assert_exactly_once(["term"])
    assert report["successful"] == 800


def test_reconciliation_while_a_batch_settles_reports_nothing(make_stack):
    """An operator runs `payouts reconcile` at any time: transfers the provider made for items
    not recorded yet are in motion, not discrepancies (it reported them all before; a fault test
    failed in CI when a neighbour's batch was still settling)."""
    stack = make_stack(PIX_SIM_LATENCY_MS="150-250", WORKER_CONCURRENCY="20")
    stack.start_service()
    assert stack.post("live", items("live", 400)).status_code == 202
    ledger = LedgerCheck(stack.env["DATABASE_URL"]) if stack.postgres is not None else None
    found, mid_batch = [], 0
    while (report := stack.report("live"))["status"] != "completed":
        found += reconcile(stack.store, stack.provider, ledger=ledger)
        mid_batch += 0 < report["processed"] < 400

    assert mid_batch >= 3, mid_batch  # it did run while items were being paid
    assert found == []
    stack.assert_exactly_once(["live"])


def test_sigterm_to_the_api_finishes_the_request_in_flight(make_stack):
    stack = make_stack()
    stack.start_api()
    stack.start_worker()
    api = next(p for p in stack.procs if "gunicorn" in p.args[0])
    answers = []
    poster = threading.Thread(target=lambda: answers.append(stack.post("big", items("b", 5000))))
    poster.start()
    deadline = time.monotonic() + 30
    while stack.report("big") is None and time.monotonic() < deadline:
        time.sleep(0.01)  # the request is being handled: its batch is being written or published
    api.send_signal(signal.SIGTERM)
    poster.join(timeout=60)

    assert answers and answers[0].status_code == 202
    assert api.wait(timeout=60) == 0
    [report] = stack.assert_exactly_once(["big"], timeout=180)
    assert report["successful"] == 5000


def test_logs_are_json_lines_with_context_and_no_pix_key(make_stack):
    metrics_port = free_port()
    stack = make_stack(PAYOUTS_WORKER_METRICS_PORT=str(metrics_port))
    stack.start_api()
    worker = stack.start_worker()
    secret = "private.person@example.com"
    batch = [{"external_id": "log-1", "user_id": "u1", "amount_cents": 990, "pix_key": secret}]
    response = requests.post(f"{stack.api_url}/api/payouts", timeout=30,
                             headers={**stack.auth, "X-Request-ID": "req-42"},
                             json={"batch_id": "logged", "items": batch})
    assert response.headers["X-Request-ID"] == "req-42"
    stack.assert_exactly_once(["logged"])

    api_log = next(p for p in stack.procs if "gunicorn" in p.args[0]).log_path.read_text()
    worker_log = worker.log_path.read_text()
    assert secret not in api_log and secret not in worker_log
    request_lines = [json.loads(line) for line in api_log.splitlines() if '"request"' in line]
    post = next(e for e in request_lines if e.get("request_id") == "req-42")
    assert post["batch_id"] == "logged" and post["status"] == 202 and post["client"] == "tests"
    assert post["duration_ms"] > 0 and post["level"] == "INFO" and post["ts"]
    settled = [json.loads(line) for line in worker_log.splitlines() if '"settle outcome"' in line]
    [event] = [e for e in settled if e.get("external_id") == "log-1"]
    assert event["batch_id"] == "logged" and event["outcome"] == "paid" and event["attempt"] == 1
    assert event["task_id"] and event["duration_ms"] >= 0

    exported = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(exported) for s in family.samples}
    assert samples[("payouts_settle_outcomes_total", (("outcome", "paid"),))] == 1
    assert samples[("payouts_provider_call_seconds_count", (("result", "settled"),))] == 1
