"""Per-process handles on the store and the provider, created on first use.

Created lazily so each prefork child (or the API process) opens its own Redis connections.
"""

from __future__ import annotations

from functools import lru_cache

import redis

from payouts_tasks.provider import PixProvider
from payouts_tasks.settings import get_settings
from payouts_tasks.store import PayoutStore


@lru_cache(maxsize=1)
def store_client() -> redis.Redis:
    return redis.Redis.from_url(get_settings().store_url, health_check_interval=30)


@lru_cache(maxsize=1)
def get_store() -> PayoutStore:
    return PayoutStore(store_client())


@lru_cache(maxsize=1)
def get_provider() -> PixProvider:
    from payouts_tasks.provider.simulated import build_provider

    return build_provider(get_settings(), store_client())
