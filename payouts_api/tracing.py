"""The API's part of the batch trace: each request a span, its publish message a child of it."""

from __future__ import annotations

import os

from flask import Flask

from payouts_core import tracing
from payouts_tasks.tracing import instrument_celery


def init_tracing(app: Flask) -> None:
    """Instrument this app when OTEL_* switch tracing on (payouts_core/tracing.py); else nothing."""
    if not instrument_celery("payouts-api") or tracing.disabled("flask"):
        return
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    # OTEL_PYTHON_FLASK_EXCLUDED_URLS, when set, replaces the default (scrapes and probes).
    excluded = None if "OTEL_PYTHON_FLASK_EXCLUDED_URLS" in os.environ else tracing.DEFAULT_EXCLUDED_URLS
    FlaskInstrumentor().instrument_app(app, excluded_urls=excluded)
    app.wsgi_app = UntrustedTraceHeaders(app.wsgi_app)


class UntrustedTraceHeaders:
    """WSGI middleware outside the instrumentation: a client's `traceparent`, `tracestate` and
    `baggage` are dropped, so every request starts a trace of ours. Trusted, they would let a
    client choose trace ids (joining another client's batch trace) and force sampling on."""

    DROPPED = ("HTTP_TRACEPARENT", "HTTP_TRACESTATE", "HTTP_BAGGAGE")

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        for name in self.DROPPED:
            environ.pop(name, None)
        return self.wsgi_app(environ, start_response)
