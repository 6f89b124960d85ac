"""Redis URL helpers of the CLI (starting a private redis-server lives in payouts_devstack)."""

from __future__ import annotations

from urllib.parse import urlsplit


def redact_url(url: str) -> str:
    """A Redis URL without its password, fit for messages."""
    password = urlsplit(url).password
    return url if password is None else url.replace(f":{password}@", ":***@", 1)
