"""Fault injection for the fault suite, off unless PAYOUTS_FAULT_CRASH_AFTER_PAY is set.

`crash_after_pay` kills the worker process right after the provider accepted a transfer and
before the outcome is recorded: the worst moment for exactly-once. It fires once per
external_id (a marker in Redis), so the redelivered task can finish the job.
"""

from __future__ import annotations

import logging
import os

from payouts_tasks.resources import store_client
from payouts_tasks.settings import get_settings

log = logging.getLogger(__name__)


def crash_after_pay(external_id: str) -> None:
    marker = get_settings().fault_crash_after_pay
    if not marker or marker not in external_id:
        return
    if store_client().set(f"faults:crashed-after-pay:{external_id}", "1", nx=True, ex=3600):
        log.warning("fault injection: killing the worker after paying %s", external_id)
        os._exit(137)
