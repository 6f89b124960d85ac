"""Every dashboard panel's query returns series from a real Prometheus scraping the real
exporters (the API's /metrics, a worker's and the archiver's ports) during a real batch; every
metric an alert names exists there, and Prometheus evaluates every rule without error."""

from __future__ import annotations

import json
import math
import os
import re
import time

import requests
import yaml

from observability import dashboard
from payouts_devstack import Stack, free_port
from payouts_devstack.prometheus import OBSERVABILITY, Prometheus
from tests.conftest import API_KEY, METRICS_TOKEN, OTHER_KEY, wait_for
from tests.webhook_receiver import Receiver

ITEMS = 300
ENV = {
    # Long enough for a few scrapes while it runs, with retries and failures to show.
    "PIX_SIM_LATENCY_MS": "200-600", "PIX_SIM_TRANSIENT_FAILURE_RATE": "0.1",
    "PAYOUTS_WEBHOOKS_ALLOW_HTTP": "true", "PAYOUTS_WEBHOOKS_ALLOW_PRIVATE": "true",
}


def _auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _batch(batch_id: str, n: int) -> dict:
    return {"batch_id": batch_id, "items": [
        {"external_id": f"{batch_id}-{i}", "user_id": "u", "amount_cents": 100 + i,
         "pix_key": "fail.ac03@pix.test" if i % 50 == 0 else "someone@example.com"} for i in range(n)]}


def _finite(result: list[dict]) -> bool:
    return any(not math.isnan(float(value)) for series in result for _, value in series["values"])


def test_the_dashboard_file_is_what_the_generator_writes():
    assert dashboard.OUT.read_text() == dashboard.render(), "run: python -m observability.dashboard"
    panels = json.loads(dashboard.OUT.read_text())["panels"]
    assert len(panels) == len(dashboard.PANELS) and all(p["targets"] for p in panels)


def test_every_panel_and_alert_meets_real_metrics(tmp_path, uid):
    worker_port, webhooks_port, archiver_port = free_port(), free_port(), free_port()
    env = {**os.environ, **ENV, "PAYOUTS_WORKER_METRICS_PORT": str(worker_port)}
    hooks = Receiver().start()
    with Stack(tmp_path / "stack", env) as stack:
        stack.start_redis()
        stack.start_api()
        stack.start_worker(concurrency=50)
        stack.start_webhook_worker(env={"PAYOUTS_WEBHOOK_METRICS_PORT": str(webhooks_port)})
        stack.start_archiver(env={"PAYOUTS_ARCHIVER_METRICS_PORT": str(archiver_port)})
        api = stack.api_url
        requests.post(f"{api}/api/webhooks", headers=_auth(API_KEY), timeout=10,
                      json={"url": hooks.url}).raise_for_status()
        # /metrics answers the operator's token only (the compose config reads it from a secret).
        jobs = {"payouts-api": ([api.removeprefix("http://")], METRICS_TOKEN),
                "payouts-worker": ([f"127.0.0.1:{worker_port}"], None),
                "payouts-webhooks": ([f"127.0.0.1:{webhooks_port}"], None),
                "payouts-archiver": ([f"127.0.0.1:{archiver_port}"], None)}
        with Prometheus(tmp_path / "prometheus", jobs) as prometheus:
            prometheus.wait(prometheus.targets_up, 60, "every exporter scraped")
            time.sleep(3)  # samples before the batch: rates start from the counters' zeros
            start = time.time()
            for key, n in ((API_KEY, ITEMS), (OTHER_KEY, ITEMS // 3)):  # two clients in flight
                response = requests.post(f"{api}/api/payouts", headers=_auth(key), timeout=30,
                                         json=_batch(f"dash-{uid}", n))
                assert response.status_code == 202, response.text
            for key in (API_KEY, OTHER_KEY):
                wait_for(lambda k=key: requests.get(f"{api}/api/payouts/dash-{uid}", headers=_auth(k),
                                                    timeout=10).json()["status"] == "completed",
                         120, "both batches completed")
            wait_for(lambda: hooks.received, 30, "the webhook delivery")
            time.sleep(4)  # the last values scraped, the archive drained
            end = time.time()

            empty = [(title, expr) for title, _, targets in dashboard.PANELS for expr, _ in targets
                     if not _finite(prometheus.query_range(expr, start - 5, end))]
            assert not empty, f"panel queries without a value during the batch: {empty}"
            clients = {s["metric"]["client"] for s in prometheus.query_range(
                "sum by (client) (payouts_items_in_flight)", start, end)}
            assert clients == {"tests", "other"}

            names = prometheus.metric_names()
            rules = yaml.safe_load((OBSERVABILITY / "alerts.yml").read_text())
            exprs = [r["expr"] for group in rules["groups"] for r in group["rules"]]
            used = {m for expr in exprs for m in re.findall(r"\b(payouts_[a-z_]+|up)\b", expr)}
            assert used - names == set(), "alerts name metrics no exporter serves"
            groups = prometheus.api("rules")["groups"]
            evaluated = [r for g in groups for r in g["rules"]]
            assert len(evaluated) == len(exprs)
            assert all(r["health"] == "ok" for r in evaluated), evaluated
    hooks.stop()
