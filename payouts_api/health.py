"""Liveness and readiness for orchestrators: /healthz (process up), /readyz (can do work).

/healthz touches nothing and is exempt from the per-address limit, so liveness never depends
on Redis. /readyz is limited and answers from a result cached for READYZ_CACHE_S per process:
each fresh check broadcasts a ping to every worker, which callers must not be able to multiply.
"""

from __future__ import annotations

import threading
import time

import redis
from flask import Blueprint, current_app, jsonify
from kombu.exceptions import OperationalError

from payouts_api.extensions import limiter
from payouts_tasks import app as celery_app

bp = Blueprint("health", __name__)
READYZ_CACHE_S = 1.0


class _ReadyzCache:
    """One app's last readiness result, and the lock that lets one check run at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.until = 0.0
        self.checks: dict = {}


@bp.record_once
def _init_cache(state) -> None:
    state.app.extensions["payouts_readyz"] = _ReadyzCache()


@bp.get("/healthz")
@limiter.exempt
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Redis and the broker answer, and at least one worker answers a ping in time."""
    cache = current_app.extensions["payouts_readyz"]
    # One check at a time: callers arriving while it runs get its result instead of another ping.
    with cache.lock:
        if time.monotonic() >= cache.until:
            cache.checks = _check_all(current_app.config["SETTINGS"].readyz_timeout_s)
            cache.until = time.monotonic() + READYZ_CACHE_S
        checks = cache.checks
    ready = all(check["ok"] for check in checks.values())
    response = jsonify(status="ready" if ready else "not ready", checks=checks)
    response.status_code = 200 if ready else 503
    return response


def _check_all(timeout: float) -> dict:
    checks = {"redis": _check_redis(), "broker": _check_broker(timeout)}
    checks["workers"] = _check_workers(timeout) if checks["broker"]["ok"] else \
        {"ok": False, "error": "broker unreachable"}
    return checks


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
