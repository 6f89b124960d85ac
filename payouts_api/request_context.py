"""Per-request context: the request id (X-Request-ID in and out), the JSON request log line,
and the HTTP metrics."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, g, request

from payouts_api.metrics import HTTP_REQUESTS, HTTP_SECONDS
from payouts_core.logs import request_id_var

log = logging.getLogger("payouts_api.request")
_ACCEPTABLE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def init_request_context(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        offered = request.headers.get("X-Request-ID", "")
        g.request_id = offered if _ACCEPTABLE_ID.match(offered) else uuid.uuid4().hex
        g.started = time.monotonic()
        request_id_var.set(g.request_id)

    @app.after_request
    def _finish(response):
        response.headers["X-Request-ID"] = g.get("request_id", "")
        route = request.url_rule.rule if request.url_rule else "unmatched"
        elapsed = time.monotonic() - g.get("started", time.monotonic())
        HTTP_REQUESTS.labels(route, request.method, str(response.status_code)).inc()
        HTTP_SECONDS.labels(route, request.method).observe(elapsed)
        log.info("request", extra={"method": request.method, "route": route,
                                   "status": response.status_code,
                                   "duration_ms": round(elapsed * 1000, 1),
                                   "client": g.get("client_name"),
                                   "batch_id": g.get("batch_id")})
        return response
