"""Per-process handles on the store and the provider, created on first use.

Created lazily so each prefork child (or the API process) opens its own Redis connections.
"""

from __future__ import annotations

from functools import lru_cache

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from payouts_core.provider import PixProvider
from payouts_core.settings import Settings, get_settings
from payouts_core.store import PayoutStore


@lru_cache(maxsize=1)
def store_client() -> redis.Redis:
    """Retries through a Redis restart (about a minute) instead of failing the task.

    Every script the store runs is idempotent in effect, so a command replayed after a dropped
    reply cannot count or pay twice.
    """
    return redis.Redis.from_url(
        get_settings().store_url,
        health_check_interval=30,
        socket_connect_timeout=2,
        socket_timeout=15,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=40),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


@lru_cache(maxsize=1)
def get_store() -> PayoutStore:
    return PayoutStore(store_client())


@lru_cache(maxsize=1)
def get_provider() -> PixProvider:
    """One per process (for Efí: one token and one connection pool per worker process)."""
    return build_provider(get_settings(), store_client())


def build_provider(settings: Settings, client: redis.Redis) -> PixProvider:
    """PAYOUTS_PROVIDER: the simulator (default) or Efí's Pix API, on this Redis client."""
    if settings.provider == "efi":
        from payouts_core.provider.efi import build_provider as build_efi

        return build_efi(settings, client)
    from payouts_core.provider.simulated import build_provider as build_simulated

    return build_simulated(settings, client)
