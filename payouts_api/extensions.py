"""Flask extensions, created here and bound to the app in the factory.

Two kinds of rate limit: the per-client tiers decorated on the payouts routes, and one
per-address budget (UNAUTHENTICATED) for failed API keys and the open routes. The limit headers
are written here, not by flask-limiter: its Retry-After can be 0 and rides on every answer, and
its RateLimit-Reset is an epoch where the RateLimit header fields draft uses delta seconds.
"""

from __future__ import annotations

import logging
import math
import time

import redis
from flask import Flask, Response, current_app, g
from flask_limiter import ApplicationLimit, Limiter, RequestLimit
from flask_limiter.util import get_remote_address
from limits.storage import RedisStorage

from payouts_api.auth import ANONYMOUS, needs_key

log = logging.getLogger(__name__)


def client_identity() -> str:
    """Rate limits apply per API key name when the caller has one, else per address."""
    name = g.get("client_name")
    return f"key:{name}" if name and name != ANONYMOUS else f"ip:{get_remote_address()}"


def address_identity() -> str:
    return f"ip:{get_remote_address()}"


def _spends_address_budget(response: Response) -> bool:
    """A rejected key, or any answer on a route that needs none, counts against the address."""
    return response.status_code == 401 or not needs_key()


# Checked before authentication on every limited route, valid key or not: if a valid key still
# got through once the budget is spent, the 429-or-not answer would tell a guesser which key
# is right. Only failures and open routes spend it, so a client with a good key never does.
UNAUTHENTICATED = ApplicationLimit(
    limit_provider=lambda: current_app.config["SETTINGS"].ratelimit_unauthenticated,
    key_function=address_identity,
    scope="unauthenticated",
    deduct_when=_spends_address_budget,
    error_message="too many failed API keys or unauthenticated requests from this address",
)

limiter = Limiter(key_func=client_identity, application_limits=[UNAUTHENTICATED])


def init_limiter(app: Flask) -> None:
    # Registered before the limiter's own after_request hook, so it runs after that hook has
    # made the conditional deductions and RateLimit-Remaining counts this request.
    app.after_request(_limit_headers)
    limiter.init_app(app)


def seconds_to_reset(limit: RequestLimit) -> int:
    """Whole seconds, rounded up, until the limit's window ends (0 when no window is open).

    Redis's TTL rounds to the nearest second, so a wait read from it can fall half a second
    short and a client retrying on time is refused again; PTTL is exact.
    """
    storage = limiter.storage
    if isinstance(storage, RedisStorage):
        ms = storage.get_connection(True).pttl(storage.prefixed_key(limit.key))
        return math.ceil(ms / 1000) if ms > 0 else 0
    return max(0, math.ceil(limit.window[0] - time.time()))


def _limit_headers(response: Response) -> Response:
    """RateLimit-Limit/-Remaining/-Reset (delta seconds) for the limit that applied, and on a
    429 only, Retry-After: the longest wait among the breached limits, at least 1 second."""
    limit = limiter.current_limit
    if limit is None:
        return response
    try:
        reset = seconds_to_reset(limit)
        response.headers["RateLimit-Limit"] = str(limit.limit.amount)
        response.headers["RateLimit-Remaining"] = str(limit.remaining)
        response.headers["RateLimit-Reset"] = str(reset)
        if response.status_code == 429:
            waits = [seconds_to_reset(lim) for lim in limiter.current_limits if lim.breached]
            response.headers["Retry-After"] = str(max([1, reset, *waits]))
    except redis.RedisError as exc:  # limiter storage gone: answer without the headers (fail open)
        log.warning("rate-limit headers skipped: %s", exc)
    return response
