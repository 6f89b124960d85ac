"""Liveness and readiness for orchestrators: /healthz (process up), /readyz (can do work)."""

from __future__ import annotations

import time

import redis
from flask import Blueprint, current_app, jsonify
from kombu.exceptions import OperationalError

from payouts_tasks import app as celery_app

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Redis and the broker answer, and at least one worker answers a ping in time."""
    timeout = current_app.config["PAYOUTS_READYZ_TIMEOUT_S"]
    checks = {"redis": _check_redis(), "broker": _check_broker(timeout)}
    checks["workers"] = _check_workers(timeout) if checks["broker"]["ok"] else \
        {"ok": False, "error": "broker unreachable"}
    ready = all(check["ok"] for check in checks.values())
    response = jsonify(status="ready" if ready else "not ready", checks=checks)
    response.status_code = 200 if ready else 503
    return response


def _timed(check) -> dict:
    started = time.monotonic()
    try:
        result = {"ok": True, **(check() or {})}
    except (redis.RedisError, OperationalError, OSError) as exc:
        result = {"ok": False, "error": type(exc).__name__}
    result["ms"] = round((time.monotonic() - started) * 1000, 1)
    return result


def _check_redis() -> dict:
    return _timed(lambda: current_app.extensions["payouts_store"].client.ping() and None)


def _check_broker(timeout: float) -> dict:
    def ping_broker():
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    return _timed(ping_broker)


def _check_workers(timeout: float) -> dict:
    def ping_workers():
        # limit=1: answer as soon as one worker replies instead of waiting out the timeout.
        replies = celery_app.control.ping(timeout=timeout, limit=1)
        if not replies:
            raise OperationalError("no worker answered")
        return {"first": next(iter(replies[0]))}
    return _timed(ping_workers)
