"""The ledger's read side in the app: the process's `LedgerReads` (its pool opens on first use)
and a 503 when PostgreSQL does not answer, since only it knows an archived batch."""

from __future__ import annotations

import logging

from flask import Flask, current_app

from payouts_api.problems import problem_response
from payouts_core.ledger.reads import LedgerReads, LedgerUnavailable, shared

log = logging.getLogger(__name__)


def init_ledger(app: Flask) -> None:
    app.extensions["payouts_ledger"] = shared(app.config["SETTINGS"].ledger.database_url)

    @app.errorhandler(LedgerUnavailable)
    def _ledger_unavailable(exc: LedgerUnavailable):
        log.error("ledger unavailable: %s", exc)
        return problem_response(503, "Service unavailable",
                                "The ledger (PostgreSQL) is not answering; it holds the history "
                                "and archived batches. Retry later.")


def ledger() -> LedgerReads:
    return current_app.extensions["payouts_ledger"]
