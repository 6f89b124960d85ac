"""Fault injection for the ledger's fault suite: the archiver dies between its commit and its
acknowledgement (the XDEL of what it committed), the moment a replay must be harmless.

On only with PAYOUTS_FAULT_ARCHIVER_CRASH_AFTER_COMMIT=true in test or development (production
refuses the setting at start, and the hook is inert there anyway). It fires once per Redis (a
marker key), so the restarted archiver replays the committed entries and goes on.
"""

from __future__ import annotations

import logging
import os

import redis

from payouts_core.settings import RELAXED_ENVIRONMENTS, Settings
from payouts_core.store import OUTBOX

log = logging.getLogger(__name__)

MARKER = "faults:archiver-crashed-after-commit"
CRASH_EXIT = 137


class _CrashBeforeAcknowledging(redis.Redis):
    """The archiver acknowledges with XDEL only after its commit: dying on the first one is dying
    after a commit, before the acknowledgement."""

    def xdel(self, name, *ids):
        if name == OUTBOX and self.set(MARKER, "1", nx=True, ex=3600):
            log.warning("fault injection: killing the archiver after its commit, before XDEL of "
                        "%d entries", len(ids))
            os._exit(CRASH_EXIT)
        return super().xdel(name, *ids)


def archiver_redis(client: redis.Redis, settings: Settings) -> redis.Redis:
    """`client`, or with the hook armed a client on its pool that crashes at the first XDEL."""
    if settings.ledger.fault_crash_after_commit and settings.environment in RELAXED_ENVIRONMENTS:
        return _CrashBeforeAcknowledging(connection_pool=client.connection_pool)
    return client
