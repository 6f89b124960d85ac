"""Liveness and readiness for orchestrators: /healthz (process up), /readyz (can do work).

/healthz touches nothing and is exempt from the per-address limit, so liveness never depends
on Redis. /readyz answers from a result cached for READYZ_CACHE_S per process: each fresh check
broadcasts a ping to every worker, which callers must not be able to multiply; the cache bounds
that, so /readyz is exempt from the per-address budget too (a load balancer probing it every
second from the proxy's address would otherwise spend the budget every client behind it shares).
"""

from __future__ import annotations

import threading
import time

import psycopg
import redis
from flask import Blueprint, current_app, jsonify
from kombu.exceptions import OperationalError

from payouts_api.extensions import limiter
from payouts_core.ledger.backlog import outbox_backlog
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
@limiter.exempt
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
    checks["ledger"] = _check_ledger(timeout)
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



def _check_ledger(timeout: float) -> dict:
    """The archive's backlog, and whether PostgreSQL answers. The API stays ready while the
    ledger is down (settlement never waits on it, SPEC §10) until the backlog passes
    PAYOUTS_OUTBOX_MAX, when new batches are refused (payouts_api.backpressure)."""
    started = time.monotonic()
    outbox_max = current_app.config["SETTINGS"].ledger.outbox_max
    try:
        backlog = outbox_backlog(current_app.extensions["payouts_store"].client)
    except (redis.RedisError, OSError) as exc:
        result = {"ok": False, "error": type(exc).__name__}
    else:
        result = {"ok": not backlog.full(outbox_max), "backlog": backlog.events,
                  "oldest_s": backlog.oldest_s, "max": outbox_max,
                  "database": _database_reachable(timeout)}
        if not result["ok"]:
            result["error"] = "backlog above PAYOUTS_OUTBOX_MAX: new batches are refused"
    result["ms"] = round((time.monotonic() - started) * 1000, 1)
    return result


def _database_reachable(timeout: float) -> str:
    """"reachable", or "unreachable (<error type>)": shown, never a reason to be unready."""
    url = current_app.config["SETTINGS"].ledger.database_url
    try:
        with psycopg.connect(url, connect_timeout=max(1, round(timeout))) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"unreachable ({type(exc).__name__})"
    return "reachable"
