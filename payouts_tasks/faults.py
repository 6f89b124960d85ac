"""Fault injection for the fault suite, off unless PAYOUTS_FAULT_CRASH_AFTER_PAY is set.

`crash_after_pay` kills the worker process right after the provider accepted a transfer and
before the outcome is recorded: the worst moment for exactly-once. It fires once per
external_id (a marker in Redis), so the redelivered task can finish the job. Outside
PAYOUTS_ENV=test or development the hook is inert, so no external_id can reach it in production.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache

from payouts_core.resources import store_client
from payouts_core.settings import RELAXED_ENVIRONMENTS, Settings, get_settings

log = logging.getLogger(__name__)


def armed_marker(settings: Settings) -> str:
    """The crash marker, or "" unless this process runs as test or development."""
    return settings.fault_crash_after_pay if settings.environment in RELAXED_ENVIRONMENTS else ""


@lru_cache(maxsize=1)
def _marker() -> str:
    """Read once per process: the hook sits on every settlement's hot path."""
    return armed_marker(get_settings())


def crash_after_pay(external_id: str) -> None:
    marker = _marker()
    if not marker or marker not in external_id:
        return
    if store_client().set(f"faults:crashed-after-pay:{external_id}", "1", nx=True, ex=3600):
        log.warning("fault injection: killing the worker after paying %s", external_id)
        os._exit(137)
