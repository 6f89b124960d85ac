"""JSON-lines logging for the API and the workers (python-json-logger).

One line per event, with the context that makes it searchable: request_id, batch_id,
external_id, task_id, attempt, outcome, duration_ms. Nothing here ever sees a full pix_key:
callers log masked keys only.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar

from pythonjsonlogger.json import JsonFormatter

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
# Fields the running task adds to its log lines (task_id, task_name); set by payouts_tasks, so the
# core needs no Celery. Context variables are per greenlet under gevent.
task_context_var: ContextVar[dict | None] = ContextVar("task_context", default=None)


class ContextFilter(logging.Filter):
    """Adds the current request id (API) or task id and name (worker) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = request_id_var.get()
        if request_id and not hasattr(record, "request_id"):
            record.request_id = request_id
        for name, value in (task_context_var.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Route the root logger to stderr, as JSON lines unless fmt == 'text'."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="ts",
        ))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
