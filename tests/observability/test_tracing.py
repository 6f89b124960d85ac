"""One trace per batch across real processes: the API (gunicorn) and a gevent worker export to a
real OTLP/HTTP receiver; their JSON logs carry the trace id. Tracing off installs nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests

from payouts_core import tracing
from payouts_core.trace_sampling import SETTLE_SPANS_PER_TRACE
from payouts_devstack import Stack
from payouts_devstack.otlp_receiver import OtlpReceiver
from tests.conftest import API_KEY, OTHER_KEY, wait_for
from tests.webhook_receiver import Receiver

ITEMS = 40  # four times the settle spans one trace records per process


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """API and worker exporting spans to a receiver, with a webhook endpoint of the tests' client."""
    otlp, hooks = OtlpReceiver(), Receiver().start()
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
           "OTEL_BSP_SCHEDULE_DELAY": "200", "PAYOUTS_WEBHOOKS_ALLOW_HTTP": "true",
           "PAYOUTS_WEBHOOKS_ALLOW_PRIVATE": "true"}
    workdir = tmp_path_factory.mktemp("traced")
    with Stack(workdir, env) as stack:
        stack.start_redis()
        stack.start_api()
        stack.start_worker(concurrency=20)
        stack.start_webhook_worker()
        requests.post(f"{stack.api_url}/api/webhooks", headers=_auth(API_KEY), timeout=10,
                      json={"url": hooks.url}).raise_for_status()
        yield stack, otlp, workdir
    otlp.stop()
    hooks.stop()


def _auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _post(stack, key: str, batch_id: str, headers: dict | None = None) -> requests.Response:
    items = [{"external_id": f"{batch_id}-{i}", "user_id": "u", "amount_cents": 100 + i,
              "pix_key": "fail.ac03@pix.test" if i == 0 else "someone@example.com"}
             for i in range(ITEMS)]
    response = requests.post(f"{stack.api_url}/api/payouts", timeout=30, json={
        "batch_id": batch_id, "items": items}, headers={**_auth(key), **(headers or {})})
    assert response.status_code == 202, response.text
    wait_for(lambda: requests.get(f"{stack.api_url}/api/payouts/{batch_id}", headers=_auth(key),
                                  timeout=10).json()["status"] == "completed", 60, "completion")
    return response


def _log_lines(workdir, prefix: str) -> list[dict]:
    lines = []
    for path in sorted(workdir.glob(f"{prefix}-*.log")):
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
    return lines


def _request_trace_id(workdir, batch_id: str) -> str:
    def find():
        return next((line["trace_id"] for line in _log_lines(workdir, "api")
                     if line.get("message") == "request" and line.get("batch_id") == batch_id
                     and line.get("route") == "/api/payouts"), None)

    return wait_for(find, 10, f"the POST's request log line for {batch_id}")


def test_one_trace_per_batch_from_the_post_to_the_webhook(traced):
    stack, otlp, workdir = traced
    _post(stack, API_KEY, "traced-1")
    trace_id = _request_trace_id(workdir, "traced-1")

    names = {"run/payouts.publish", "run/payouts.aggregate", "run/payouts.webhook_deliver"}
    spans = wait_for(lambda: (s := otlp.trace(trace_id)) and names <= {x.name for x in s} and s,
                     30, "publish, aggregate and webhook spans in the POST's trace")
    by_name = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    assert by_name["POST /api/payouts"][0].service == "payouts-api"
    assert by_name["run/payouts.aggregate"][0].service == "payouts-worker"
    # The webhook delivery runs in the batch's trace (its HTTP call goes through a raw urllib3
    # connection to the address the SSRF guard checked: no client span of its own).
    assert by_name["run/payouts.webhook_deliver"][0].service == "payouts-worker"
    redis_calls = {s.parent_id for s in spans if s.name in ("EVALSHA", "HGETALL", "HSET", "HMGET")}
    assert redis_calls & {s.span_id for s in by_name["run/payouts.settle"]}, sorted(by_name)
    # Not one settle span per item: a budget per trace (one worker process here).
    assert 1 <= len(by_name["run/payouts.settle"]) <= SETTLE_SPANS_PER_TRACE < ITEMS
    # Every span's parent was exported too: the aggregate (published by an unrecorded settle)
    # hangs from a recorded span, so the trace is one tree from the POST down.
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_id not in ids]
    assert [r.name for r in roots] == ["POST /api/payouts"]


def test_every_log_line_of_the_batch_carries_its_trace_id(traced):
    stack, otlp, workdir = traced
    _post(stack, API_KEY, "traced-2")
    trace_id = _request_trace_id(workdir, "traced-2")
    worker_lines = [line for line in _log_lines(workdir, "worker") if line.get("batch_id") == "traced-2"]
    outcomes = [line for line in worker_lines if line["message"] == "settle outcome"]
    assert len(outcomes) == ITEMS  # unrecorded settle spans still carry the batch's trace id
    assert {line.get("trace_id") for line in worker_lines} == {trace_id}
    assert any(line["message"].startswith("batch completed") for line in worker_lines)


def test_a_client_cannot_choose_or_join_a_trace(traced):
    """Another client sends the first client's trace context: its batch gets a trace of its own
    (incoming trace headers are not trusted), so no trace mixes two clients' work."""
    stack, otlp, workdir = traced
    _post(stack, API_KEY, "traced-3")
    first = _request_trace_id(workdir, "traced-3")
    stolen = f"00-{first}-{'1' * 16}-01"
    _post(stack, OTHER_KEY, "traced-3", headers={"traceparent": stolen, "tracestate": "x=1"})
    lines = [line for line in _log_lines(workdir, "api") if line.get("batch_id") == "traced-3"
             and line.get("message") == "request" and line.get("client") == "other"]
    assert lines and all(line["trace_id"] != first for line in lines)
    spans = otlp.trace(first)
    assert not any(s.parent_id == "1" * 16 for s in spans)


def test_tracing_off_installs_nothing():
    """Without OTEL_TRACES_EXPORTER (or with the SDK disabled) no tracer provider, no
    instrumentation and no log field is installed in the API or the worker, so off costs nothing.
    (redis-py imports the OpenTelemetry API itself when it is installed; it stays unused.)"""
    assert not tracing.wanted({})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none"})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "console"})
    code = ("import logging, sys, redis, payouts_api, payouts_tasks.celery_app as c\n"
            "app = payouts_api.create_app()\n"
            "c._tracing()\n"
            "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.instrumentation',"
            " 'opentelemetry.sdk.trace'))), hasattr(redis.Redis.execute_command, '__wrapped__'),"
            " logging.getLogRecordFactory() is logging.LogRecord, type(app.wsgi_app).__name__)")
    for off in ({}, {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}):
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}, **off}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             check=True).stdout
        assert out.split() == ["[]", "False", "True", "method"], out
