"""RFC 9457 problem+json responses for every error the API can give, including Flask's own."""

from __future__ import annotations

import logging

import redis
from flask import Flask, jsonify, request
from flask_limiter.errors import RateLimitExceeded
from kombu.exceptions import OperationalError
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from payouts_api.schemas import ERRORS_OMITTED, MAX_FIELD_ERRORS

log = logging.getLogger(__name__)

MAX_FIELD_PATH = 200  # an unknown key is the client's own text: never echo a huge one back
PROBLEM_TYPES = {
    400: "malformed-request", 401: "unauthorized", 404: "not-found", 405: "method-not-allowed",
    409: "batch-conflict", 413: "body-too-large", 415: "unsupported-media-type",
    422: "invalid-fields", 429: "rate-limited", 500: "internal-error", 503: "unavailable",
}


class Problem(Exception):
    """An error answer the handlers raise: status, title, detail and optional field errors."""

    def __init__(self, status: int, title: str, detail: str, errors: list | None = None,
                 headers: dict | None = None):
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.errors, self.headers = errors, headers or {}


def problem_response(status: int, title: str, detail: str, errors: list | None = None,
                     headers: dict | None = None):
    body = {"type": f"/problems/{PROBLEM_TYPES.get(status, 'error')}", "title": title,
            "status": status, "detail": detail,
            "instance": request.path[:MAX_FIELD_PATH]}  # the path may be the client's huge text
    if errors is not None:
        body["errors"] = errors
    response = jsonify(body)
    response.status_code = status
    response.mimetype = "application/problem+json"
    response.headers.update(headers or {})
    return response


def field_errors(messages, prefix: str = "", notes: list[str] | None = None) -> list[dict]:
    """Flatten marshmallow's nested messages into [{"field": "items.3.pix_key", "message": ...}].

    A note saying where validation stopped (ERRORS_OMITTED) is not a field error: it goes to `notes`.
    """
    out: list[dict] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            if key == ERRORS_OMITTED:
                if notes is not None:
                    notes.append(str(value))
                continue
            path = str(key) if not prefix else f"{prefix}.{key}"
            if len(path) > MAX_FIELD_PATH:
                path = path[:MAX_FIELD_PATH] + "..."
            if key == "_schema":
                path = prefix or "body"
            out.extend(field_errors(value, path, notes))
    elif isinstance(messages, list):
        for message in messages:
            out.extend(field_errors(message, prefix, notes) if isinstance(message, dict | list)
                       else [{"field": prefix or "body", "message": str(message)}])
    else:
        out.append({"field": prefix or "body", "message": str(messages)})
    return out


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(Problem)
    def _problem(exc: Problem):
        return problem_response(exc.status, exc.title, exc.detail, exc.errors, exc.headers)

    @app.errorhandler(ValidationError)
    def _invalid(exc: ValidationError):
        notes: list[str] = []
        errors = field_errors(exc.messages, notes=notes)
        detail = f"{'At least ' if notes else ''}{len(errors)} field(s) are invalid."
        if len(errors) > MAX_FIELD_ERRORS:
            detail += f" Showing the first {MAX_FIELD_ERRORS}."
            errors = errors[:MAX_FIELD_ERRORS]
        detail = " ".join([detail, *notes])
        return problem_response(422, "Invalid fields", detail, errors)

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc: RateLimitExceeded):
        # Retry-After and RateLimit-* are added after the request by extensions._limit_headers.
        return problem_response(429, "Too many requests", f"Rate limit exceeded: {exc.description}.")

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        return problem_response(exc.code or 500, exc.name, exc.description or exc.name)

    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    @app.errorhandler(OperationalError)
    def _unavailable(exc: Exception):
        log.error("backing service unavailable: %s", exc)
        return problem_response(503, "Service unavailable",
                                "Redis or the broker is not answering; nothing was accepted. "
                                "Retry later.")  # no Retry-After: only a 429 carries one (SPEC §9)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return problem_response(500, "Internal error", "An unexpected error occurred.")
