"""API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`, named for audit and rate limits.

Keys are known only as SHA-256 digests (settings.key_digest) and compared in constant time
against every configured key, so neither timing nor an early match tells a caller anything.
"""

from __future__ import annotations

import hmac

from flask import current_app, g, request

from payouts_api.problems import Problem
from payouts_core.settings import key_digest

ANONYMOUS = "anonymous"
# Docs, OpenAPI and health checks stay open; money needs a client's key. /metrics needs the
# operator's token (PAYOUTS_METRICS_TOKEN), never a client's key: it shows service-wide volumes.
PROTECTED_BLUEPRINTS = frozenset({"payouts", "items", "reports", "webhooks"})


def presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.headers.get("X-API-Key") or None


def identify(key: str, keys: tuple[tuple[str, str], ...]) -> str | None:
    """The name of the configured key equal to `key`, comparing against all of them."""
    digest = key_digest(key)
    match = None
    for name, expected in keys:
        if hmac.compare_digest(digest, expected):
            match = name
    return match


def client_of_request() -> str | None:
    """The client whose valid key this request carries (None without one), looked up once."""
    if "key_client" not in g:
        key = presented_key()
        g.key_client = identify(key, current_app.config["SETTINGS"].api_keys) if key else None
    return g.key_client


def is_operator() -> bool:
    """The request carries the operator's metrics token (never true when none is configured)."""
    expected = current_app.config["SETTINGS"].metrics_token_digest
    key = presented_key()
    return bool(expected and key and hmac.compare_digest(key_digest(key), expected))


def holds_credential() -> bool:
    """A valid client key or the operator token: such a request never spends the per-address
    budget nor is refused by it, so one address (or a proxy) cannot lock out valid keys."""
    return client_of_request() is not None or is_operator()


def needs_key() -> bool:
    """Whether the route asked for answers only to a client with a key."""
    return request.blueprint in PROTECTED_BLUEPRINTS


def require_api_key() -> None:
    """before_request hook: sets g.client_name, or answers 401 problem+json."""
    if not needs_key():
        return
    if current_app.config["SETTINGS"].auth_disabled:
        g.client_name = ANONYMOUS
        return
    key = presented_key()
    name = client_of_request()
    if name is None:
        raise Problem(401, "Unauthorized",
                      "Send a valid API key as 'Authorization: Bearer <key>' or 'X-API-Key'."
                      if key is None else "The API key is not valid.",
                      headers={"WWW-Authenticate": 'Bearer realm="payouts"'})
    g.client_name = name
