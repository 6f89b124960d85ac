"""Flask extensions, created here and bound to the app in the factory.

Two kinds of rate limit: the per-client tiers (one write budget per route, one read budget
shared by every read route, `read_limit`), and one per-address budget (UNAUTHENTICATED) for
failed API keys and the open routes, which a request with a valid key neither spends nor meets.
The limit headers are written here, not by flask-limiter: its Retry-After can be 0 and rides on
every answer, and its RateLimit-Reset is an epoch where the RateLimit header fields draft uses
delta seconds.
"""

from __future__ import annotations

import logging
import math
import time

import redis
from flask import Flask, Response, current_app, g, request
from flask_limiter import ApplicationLimit, Limiter, RequestLimit
from flask_limiter.util import get_remote_address
from limits.storage import RedisStorage
from werkzeug.middleware.proxy_fix import ProxyFix

from payouts_api.auth import ANONYMOUS, holds_credential, needs_key

log = logging.getLogger(__name__)


def client_identity() -> str:
    """Rate limits apply per API key name when the caller has one, else per address."""
    name = g.get("client_name")
    return f"key:{name}" if name and name != ANONYMOUS else f"ip:{get_remote_address()}"


def address_identity() -> str:
    return f"ip:{get_remote_address()}"


def _spends_address_budget(response: Response) -> bool:
    """A rejected key or token, or an answer on an open route, counts against the address."""
    return response.status_code == 401 or (not needs_key() and request.blueprint != "metrics")


# Behind a reverse proxy every request has the proxy's address: one guesser there would lock out
# every tenant (issue 20). So a request with a valid key (or the operator token) is exempt: only
# failures and open routes spend the budget, and only they are refused once it is spent. A
# guesser therefore learns a right key from "not 429" as it would from "not 401"; guessing is
# bounded by the keys' length (at least 16 characters, `secrets.token_urlsafe(32)` in the docs),
# and the budget bounds what failed traffic costs. PAYOUTS_TRUSTED_PROXY_HOPS makes the address
# the client's own (ProxyFix), so one client's failures spend only its own budget.
UNAUTHENTICATED = ApplicationLimit(
    limit_provider=lambda: current_app.config["SETTINGS"].ratelimit_unauthenticated,
    key_function=address_identity,
    scope="unauthenticated",
    deduct_when=_spends_address_budget,
    exempt_when=holds_credential,
    error_message="too many failed API keys or unauthenticated requests from this address",
)

limiter = Limiter(key_func=client_identity, application_limits=[UNAUTHENTICATED])

# One read budget per client across every read route: a client alternating between reports,
# history, items and deliveries gets PAYOUTS_RATELIMIT_READ in all, not in each.
read_limit = limiter.shared_limit(lambda: current_app.config["SETTINGS"].ratelimit_read,
                                  scope="client-read")


def trust_proxies(app: Flask) -> None:
    """Take the client's address (and scheme) from the X-Forwarded-* headers set by the
    PAYOUTS_TRUSTED_PROXY_HOPS reverse proxies in front; with 0 the peer address is the client."""
    hops = app.config["SETTINGS"].trusted_proxy_hops
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)


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
