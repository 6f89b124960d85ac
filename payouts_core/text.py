"""Small conversions the core shares: Redis replies as text, timestamps as the API shows them."""

from __future__ import annotations

from datetime import UTC, datetime


def as_str(value: str | bytes | None) -> str | None:
    """A Redis reply as text, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else value


def utcnow(at: datetime | None = None) -> str:
    """An ISO 8601 UTC timestamp in milliseconds, `Z`-suffixed (now when `at` is None); a naive
    time is taken as UTC."""
    at = at or datetime.now(UTC)
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
