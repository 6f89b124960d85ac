"""OpenTelemetry tracing, configured only by the standard `OTEL_*` environment variables.

Off unless `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`, ...) and
`OTEL_SDK_DISABLED` is not true. Off, nothing is imported or installed: no span, no wrapper
around Redis or HTTP calls, no log field (the tracing-off benchmark, docs/BENCHMARKS.md).

One trace per batch: the API's POST, the publish task, the settle template's publish, the
aggregate callback and the webhook deliveries. Settle tasks run inside that trace, but only
the first few of each trace (payouts_core/trace_sampling.py) (per process) are recorded, with their Redis
and provider calls; the others are unrecorded spans of the same trace id, so their log lines
still carry it (`trace_id` in every JSON line) at no export cost. Why sampling and not span
links: links would start one trace per item (10,000 traces for a 10,000-item batch, each
exported) and the settle log lines would carry 10,000 different ids instead of the batch's.
"""

from __future__ import annotations

import logging
import os
from importlib.metadata import entry_points
from importlib.util import find_spec

log = logging.getLogger(__name__)

# Scrapes and probes would each start a trace of their own every few seconds.
DEFAULT_EXCLUDED_URLS = "metrics,healthz,readyz"

_enabled = False


def wanted(environ=os.environ) -> bool:
    """Tracing is on only when an exporter is named and the SDK is not disabled."""
    exporters = {n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",")} - {""}
    disabled = environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    return bool(exporters - {"none"}) and not disabled


def enabled() -> bool:
    return _enabled


def setup(service_name: str) -> bool:
    """Install the tracer provider, Redis and HTTP-client instrumentation and the log field, once
    per process; returns whether tracing is on. `service_name` unless OTEL_SERVICE_NAME says."""
    global _enabled
    if _enabled or not wanted():
        return _enabled
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(sampler=_sampler(), resource=Resource.create(attributes))
    for exporter in _exporters():
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _instrument_clients()
    _add_trace_ids_to_logs()
    _enabled = True
    log.info("tracing on: exporters %s", os.environ["OTEL_TRACES_EXPORTER"])
    return True


def shutdown() -> None:
    """Flush the spans still buffered (a process about to exit)."""
    if _enabled:
        from opentelemetry import trace

        trace.get_tracer_provider().shutdown()


def _exporters() -> list:
    """The exporters OTEL_TRACES_EXPORTER names: `otlp` is OTLP over HTTP/protobuf (endpoint,
    headers and timeout from the OTEL_EXPORTER_OTLP_* variables), others by entry point."""
    found = []
    for name in os.environ["OTEL_TRACES_EXPORTER"].split(","):
        name = name.strip().lower()
        if name in ("", "none"):
            continue
        if name == "otlp":
            name = "otlp_proto_http"
        (entry_point,) = entry_points(group="opentelemetry_traces_exporter", name=name) or (None,)
        if entry_point is None:
            raise ValueError(f"OTEL_TRACES_EXPORTER: no exporter named {name!r} is installed")
        found.append(entry_point.load()())
    return found


def _sampler():
    from opentelemetry.sdk.trace import sampling

    from payouts_core.trace_sampling import DropStrayClientSpans

    # The sampler OTEL_TRACES_SAMPLER / _ARG choose (default parentbased_always_on), wrapped.
    return DropStrayClientSpans(sampling._get_from_env_or_default())


def _instrument_clients() -> None:
    """Redis, the webhooks' urllib3 and the PSP adapter's HTTP client (requests, or httpx where
    it is installed)."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor

    instrumentors = {"redis": RedisInstrumentor, "urllib3": URLLib3Instrumentor,
                     "requests": RequestsInstrumentor}
    if find_spec("httpx") is not None:
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        instrumentors["httpx"] = HTTPXClientInstrumentor
    for name, instrumentor in instrumentors.items():
        if not disabled(name):
            instrumentor().instrument()


def disabled(instrumentation: str) -> bool:
    """OTEL_PYTHON_DISABLED_INSTRUMENTATIONS (the auto-instrumentation's variable, comma-separated:
    redis, urllib3, requests, httpx, flask, celery) names it."""
    names = os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "")
    return instrumentation in {n.strip().lower() for n in names.split(",")}


def _add_trace_ids_to_logs() -> None:
    """Every log record made inside a span gets `trace_id` and `span_id` (hex, as trace viewers
    show them). A record factory, so it survives handlers being replaced (configure_logging)."""
    from opentelemetry import trace

    make_record = logging.getLogRecordFactory()

    def record_with_trace_ids(*args, **kwargs):
        record = make_record(*args, **kwargs)
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return record

    logging.setLogRecordFactory(record_with_trace_ids)
