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
# Docs, OpenAPI and health checks stay open; money and metrics need a key.
PROTECTED_BLUEPRINTS = frozenset({"payouts", "items", "reports", "webhooks", "metrics"})


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
    name = identify(key, current_app.config["SETTINGS"].api_keys) if key else None
    if name is None:
        raise Problem(401, "Unauthorized",
                      "Send a valid API key as 'Authorization: Bearer <key>' or 'X-API-Key'."
                      if key is None else "The API key is not valid.",
                      headers={"WWW-Authenticate": 'Bearer realm="payouts"'})
    g.client_name = name
