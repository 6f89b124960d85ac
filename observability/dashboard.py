"""The Grafana dashboard, generated: `python -m observability.dashboard` writes
grafana/dashboards/payouts.json (a test checks the file is current and that every query below
returns series from a real Prometheus scraping a real batch).

Each panel is (title, unit, [(PromQL, legend)]); windows are fixed ([1m], [5m]) rather than
Grafana's $__rate_interval so the same text runs in Prometheus unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).parent / "grafana" / "dashboards" / "payouts.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # provisioned with this uid


def _quantiles(metric: str, *qs: float, by: str = "le", window: str = "5m") -> list[tuple[str, str]]:
    extra = by.replace("le", "").strip(", ")
    return [(f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket[{window}])))",
             f"p{round(q * 100)}" + (f" {{{{{extra}}}}}" if extra else "")) for q in qs]


PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Items settled per second, by outcome", "ops",
     [("sum by (outcome) (rate(payouts_settle_outcomes_total[1m]))", "{{outcome}}")]),
    ("Failed items by failure code (5 min)", "short",
     [("sum by (code) (increase(payouts_settle_failures_total[5m]))", "{{code}}")]),
    ("Batch duration, 202 to completed", "s", _quantiles("payouts_batch_duration_seconds", 0.5, 0.95)),
    ("Time from 202 to the first final item", "s",
     _quantiles("payouts_batch_first_item_seconds", 0.5, 0.95)),
    ("Queue depth", "short", [("sum(payouts_queue_depth)", "messages waiting"),
                              ("sum(payouts_open_batches)", "open batches")]),
    ("Queue age: oldest open batch", "s",
     [("max(payouts_oldest_open_batch_age_seconds)", "oldest open batch")]),
    ("Items in flight per client", "short",
     [("sum by (client) (payouts_items_in_flight)", "{{client}}")]),
    ("Webhook deliveries per second, by outcome", "ops",
     [("sum by (outcome) (rate(payouts_webhook_deliveries_total[5m]))", "{{outcome}}")]),
    ("Archive lag: state change to ledger row", "s",
     _quantiles("payouts_archive_lag_seconds", 0.5, 0.95)
     + [("sum(rate(payouts_archived_events_total[1m]))", "events archived/s")]),
    ("Worker saturation (busy / concurrency)", "percentunit",
     [("sum(payouts_worker_busy_tasks) / sum(payouts_worker_concurrency)", "all workers"),
      ("max by (instance) (payouts_worker_busy_tasks / payouts_worker_concurrency)", "{{instance}}")]),
    ("Worker loop lag: a ready task's wait for its process's CPU", "s",
     _quantiles("payouts_worker_loop_lag_seconds", 0.5, 0.99, by="le, instance")),
    ("Provider call duration", "s",
     _quantiles("payouts_provider_call_seconds", 0.5, 0.99, by="le, result")),
    ("Settle duration", "s", _quantiles("payouts_settle_duration_seconds", 0.5, 0.95)),
    ("Settle retries per second, by reason", "ops",
     [("sum by (reason) (rate(payouts_settle_retries_total[1m]))", "{{reason}}")]),
    ("API requests per second, by status", "reqps",
     [("sum by (status) (rate(payouts_http_requests_total[1m]))", "{{status}}")]),
    ("API latency p95, by route", "s",
     _quantiles("payouts_http_request_duration_seconds", 0.95, by="le, route")),
    ("Redis memory", "bytes", [("max(payouts_redis_used_memory_bytes)", "used"),
                               ("max(payouts_redis_maxmemory_bytes)", "maxmemory (0: none)")]),
]


def dashboard() -> dict:
    panels = []
    for n, (title, unit, targets) in enumerate(PANELS):
        panels.append({
            "id": n + 1, "type": "timeseries", "title": title, "datasource": DATASOURCE,
            "gridPos": {"h": 8, "w": 12, "x": 12 * (n % 2), "y": 8 * (n // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                        "tooltip": {"mode": "multi"}},
            "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr,
                         "legendFormat": legend} for i, (expr, legend) in enumerate(targets)],
        })
    return {"uid": "pix-payouts", "title": "PIX payouts", "schemaVersion": 39, "version": 1,
            "editable": True, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
            "tags": ["payouts"], "timezone": "utc", "panels": panels}


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
